"""Fuzz: every malformed record or config value gives the named one-line error type, never another."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_rlhf.config import ConfigError, config_fields, load_config
from llama_rlhf.data.loaders import DataError, load_preferences, load_prompts, load_sft

KEYS = ["prompt", "response", "completion", "system", "messages", "chosen", "rejected", "rating", "is_safety",
        "id", "kind", "meta", "role", "content"]
scalars = st.none() | st.booleans() | st.integers(-3, 5) | st.floats(allow_nan=True) | st.text(max_size=8) | \
    st.sampled_from(["\n\nHuman: a\n\nAssistant: b", "user", "assistant", "system", "better", " "])
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3), max_leaves=8)
records = st.dictionaries(st.sampled_from(KEYS), values, max_size=6) | values


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rec=records)
def test_loaders_raise_only_data_error(tmp_path, rec):
    p = tmp_path / "f.jsonl"
    p.write_text(json.dumps(rec) + "\n")
    for loader in (load_sft, load_preferences, load_prompts):
        try:
            loader(p)
        except DataError as e:
            assert str(e).startswith(str(p)) and "\n" not in str(e)


FIELDS = [k for k, _, _ in config_fields()]
yaml_values = st.sampled_from(["-1", "0", "1e9", "[]", "[1,", "{a", "nan", "x", "true", "[0.5, -1]", "''", "~"])


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(FIELDS), value=yaml_values)
def test_config_overrides_raise_only_config_error(key, value):
    try:
        load_config("configs/ci.yaml", [f"{key}={value}"])
    except ConfigError as e:
        assert str(e).strip()
