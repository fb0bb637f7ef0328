"""The rules language of config.yaml: on which events, under which conditions, which actions run.

- `model`: a rule (and config tests), as pydantic models: validation and JSON Schema in one place;
- `conditions`: what `when:` can say; `actions`: what a rule can do; `templates`: the values;
- `engine`: evaluate rules against an event; `validate`: checks across the whole config;
- `simulate`: explain an event, run config tests.
"""

from .engine import RenderedAction, RuleResult, context_for, evaluate
from .model import ConfigTest, Rule

__all__ = ["ConfigTest", "RenderedAction", "Rule", "RuleResult", "context_for", "evaluate"]
