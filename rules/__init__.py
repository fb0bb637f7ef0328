"""The rules language of config.yaml (coming with the rules issue)."""
