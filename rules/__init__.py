"""The rules language of config.yaml: on which events, under which conditions, which actions run.

- `model`: a rule (and a config test), as pydantic models: validation and JSON Schema in one place;
- `conditions`: what `when:` can say; `actions`: what a rule can do (the action types come from the
  connector registry); the values' templates are gu1sync.core.templates;
- `engine`: evaluate rules against an event: which match, why the others do not, the rendered actions.
"""

from .engine import RenderedAction, RuleResult, context_for, evaluate
from .model import ConfigTest, Rule

__all__ = ["ConfigTest", "RenderedAction", "Rule", "RuleResult", "context_for", "evaluate"]
