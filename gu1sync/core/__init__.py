"""What every other part of gu1-sync is built on, and which depends on none of them.

- `records`: an accepted event, an action of a rule, the envelope a kind reads (dataclasses);
- `status`: every status they can have (StrEnums);
- `values`: the value types of config models (a duration, one-or-many, a secret, a name);
- `yamlfile`: reading YAML strictly, with the position of every key, and ${ENV} filled in;
- `templates` and `paths`: the values rules and actions write (`{{ entity.externalId }}`);
- `body`: reading a webhook body; `errors`: why a delivery is refused; `timeutil`: clock, ISO 8601, durations.
"""
