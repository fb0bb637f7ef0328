"""Actions that reach Salesforce and Slack (coming with the connectors issue)."""
