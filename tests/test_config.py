import pytest
import yaml
from pydantic import ValidationError

from llama_rlhf.config import Config, ConfigError, build_config, config_fields, config_to_yaml, load_config

PRESETS = ["configs/local.yaml", "configs/llama2-7b.yaml", "configs/llama2-13b.yaml", "configs/llama2-70b.yaml"]


def test_defaults_are_the_papers():
    c = Config()
    assert c.optimizer.betas == (0.9, 0.95) and c.optimizer.eps == 1e-5 and c.optimizer.weight_decay == 0.1
    assert c.optimizer.grad_clip == 1.0 and c.optimizer.min_lr_ratio == 0.1
    assert (c.sft.lr, c.sft.batch_size, c.sft.seq_len, c.sft.epochs) == (2e-5, 64, 4096, 2)
    assert (c.reward.helpful.lr, c.reward.helpful.batch_pairs, c.reward.helpful.epochs) == (1e-5, 512, 1)
    assert c.reward.helpful.warmup_ratio == 0.03 and c.reward.helpful.min_warmup_steps == 5
    assert (c.ppo.lr, c.ppo.batch_size, c.ppo.minibatch_size, c.ppo.clip_range) == (1e-6, 512, 64, 0.2)
    assert c.ppo.kl_coef == 0.01 and c.ppo.safety_threshold == 0.15
    assert (c.iterations.num_versions, c.iterations.rs_only_until) == (5, 4)
    assert c.model.max_seq_len == 4096


@pytest.mark.parametrize("path", PRESETS)
def test_yaml_round_trip(path, tmp_path):
    cfg = load_config(path)
    out = tmp_path / "resolved.yaml"
    out.write_text(config_to_yaml(cfg))
    again = load_config(out)
    assert again == cfg
    assert yaml.safe_load(out.read_text())["model"]["preset"] == cfg.model.preset


def test_size_presets_follow_the_paper():
    assert load_config("configs/llama2-7b.yaml").ppo.kl_coef == 0.01
    assert load_config("configs/llama2-13b.yaml").ppo.kl_coef == 0.01
    c70 = load_config("configs/llama2-70b.yaml")
    assert c70.ppo.kl_coef == 0.005 and c70.reward.helpful.lr == 5e-6 and c70.model.preset == "70b"


def test_dotted_overrides_are_typed():
    c = load_config("configs/local.yaml", ["ppo.kl_coef=0.02", "rejection_sampling.temperatures=[0.7, 0.8]",
                                            "cluster.rollout.engines=2", "model.init_checkpoint=null"])
    assert c.ppo.kl_coef == 0.02 and c.rejection_sampling.temperatures == (0.7, 0.8)
    assert c.cluster.rollout.engines == 2 and c.model.init_checkpoint is None


def test_bad_value_names_field_and_value():
    with pytest.raises(ConfigError) as e:
        build_config({}, ["ppo.clip_range=-1"])
    assert "ppo.clip_range: must be > 0, got -1" in str(e.value)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"ppo\.clip: unknown key"):
        build_config({}, ["ppo.clip=0.3"])
    with pytest.raises(ConfigError, match=r"nonsense: unknown key"):
        build_config({"nonsense": 1})


def test_yaml_errors_point_at_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("run:\n  seed: 1\nppo:\n  lr: 1e-6\n  minibatch_size: 0\n  kl_coeff: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert f"{p}:5: ppo.minibatch_size: must be > 0, got 0" in msg
    assert f"{p}:6: ppo.kl_coeff: unknown key" in msg


def test_cross_field_check():
    with pytest.raises(ConfigError, match="ppo.minibatch_size: must be <= ppo.batch_size"):
        build_config({}, ["ppo.batch_size=8", "ppo.minibatch_size=16"])


def test_greedy_gatt_sampling_takes_one_sample_per_turn():
    # vLLM refuses n > 1 with greedy sampling: without the check the run would fail at its first GAtt turn
    with pytest.raises(ConfigError, match=r"gatt.samples_per_turn: greedy GAtt sampling .* must be 1, got 4"):
        build_config({}, ["gatt.temperature=0"])
    assert build_config({}, ["gatt.temperature=0", "gatt.samples_per_turn=1"]).gatt.temperature == 0.0


def test_ppo_groups_check():
    """`ppo.batch_size` counts responses: it must split into groups of `samples_per_prompt`, and rloo's
    leave-one-out baseline needs two responses per prompt at least."""
    with pytest.raises(ConfigError, match=r"ppo.batch_size: must be a multiple of ppo.samples_per_prompt \(3\)"):
        build_config({}, ["ppo.samples_per_prompt=3"])
    with pytest.raises(ConfigError, match="ppo.samples_per_prompt: the rloo advantage needs >= 2"):
        build_config({}, ["ppo.advantage=rloo"])
    with pytest.raises(ConfigError, match="ppo.critic_warmup_iterations: the rloo advantage has no critic"):
        build_config({}, ["ppo.advantage=rloo", "ppo.samples_per_prompt=2", "ppo.critic_warmup_iterations=2"])
    with pytest.raises(ConfigError, match=r"ppo.critic_warmup_iterations: must be < ppo.iterations \(8\)"):
        build_config({}, ["ppo.iterations=8", "ppo.critic_warmup_iterations=8"])
    cfg = build_config({}, ["ppo.advantage=rloo", "ppo.samples_per_prompt=4"])
    assert (cfg.ppo.advantage, cfg.ppo.samples_per_prompt) == ("rloo", 4)
    from llama_rlhf.orchestrator.cluster import ppo_roles

    assert ppo_roles(cfg) == ("reference",) and ppo_roles(Config()) == ("reference", "critic")
    assert ppo_roles(build_config({}, ["iterations.rs_only_until=5"])) == ()


def test_config_is_frozen():
    c = Config()
    with pytest.raises(ValidationError, match="frozen"):
        c.ppo.lr = 1.0


def test_every_field_is_settable_by_override():
    for key, _typ, _doc in config_fields():
        assert "." in key
    keys = {k for k, _, _ in config_fields()}
    assert {"ppo.kl_coef", "reward.safety.margin", "cluster.rollout.engines", "data.world.n_sft"} <= keys


def test_critic_start_follows_ppo_critic_init():
    """The paper's (InstructGPT's) critic starts from the helpfulness RM; `ppo.critic_init=policy` starts
    it from the checkpoint PPO starts from (a causal LM: the actors give it a fresh value head)."""
    from llama_rlhf.orchestrator.ppo_stage import critic_start

    assert critic_start(Config(), "ckpt/rm_helpful_v5", "ckpt/v5_rs") == "ckpt/rm_helpful_v5"
    cfg = build_config({}, ["ppo.critic_init=policy"])
    assert critic_start(cfg, "ckpt/rm_helpful_v5", "ckpt/v5_rs") == "ckpt/v5_rs"
    with pytest.raises(ConfigError, match="critic_init"):
        build_config({}, ["ppo.critic_init=sft"])
