"""gu1-sync: receive signed Gu1 webhooks and drive Salesforce and Slack from rules in config.yaml."""
