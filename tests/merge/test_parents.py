"""Parent checkpoints: cheap inspection, compatibility checks, loading (safetensors, pickle, LoRA)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from evomerge.errors import ParentError
from evomerge.merge.parents import check_parents, inspect_parent, layer_index, load_parent
from evomerge.toy.tiny import make_checkpoint, tiny_config


@pytest.fixture(scope="module")
def llama(family):
    return family("llama", "float32")


@pytest.fixture
def base_copy(llama, tmp_path):
    """A private copy of the tiny base model that a test may damage."""
    return shutil.copytree(llama["base"], tmp_path / "base")


def test_inspect_reads_config_and_headers(llama):
    info = inspect_parent(llama["base"])
    state = load_file(str(llama["base"] / "model.safetensors"))
    assert info.name == str(llama["base"])
    assert info.architecture == "LlamaForCausalLM"
    assert info.num_layers == 4
    assert info.shapes == {name: tuple(t.shape) for name, t in state.items()}
    assert set(info.dtypes.values()) == {"F32"}
    assert info.weight_files == [llama["base"] / "model.safetensors"]
    assert info.config["hidden_size"] == 64
    assert info.lineage is None


def test_load_parent_reads_the_tensors_and_casts(llama):
    info = inspect_parent(llama["c1"])
    stored = load_file(str(llama["c1"] / "model.safetensors"))
    parent = load_parent(info)
    assert parent.name == str(llama["c1"]) and parent.path == llama["c1"]
    assert set(parent.tensors) == set(stored)
    assert all(torch.equal(parent.tensors[n], stored[n]) for n in stored)
    half = load_parent(info, dtype=torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 and t.is_contiguous() for t in half.tensors.values())
    assert all(torch.equal(half.tensors[n], stored[n].to(torch.bfloat16)) for n in stored)


def test_sharded_checkpoint_loads_the_same_tensors(tmp_path):
    config = tiny_config("llama")
    state = make_checkpoint(tmp_path / "single", config, seed=3)
    make_checkpoint(tmp_path / "sharded", config, seed=3, max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    sharded_info = inspect_parent(tmp_path / "sharded")
    single_info = inspect_parent(tmp_path / "single")
    assert len(sharded_info.weight_files) > 1
    assert sharded_info.shapes == single_info.shapes
    sharded = load_parent(sharded_info).tensors
    single = load_parent(single_info).tensors
    assert set(sharded) == set(single)
    for name, tensor in single.items():
        assert torch.equal(sharded[name], tensor), name
        if name in state:
            assert torch.equal(tensor, state[name]), name
    check_parents([single_info, sharded_info])


def test_missing_folder(tmp_path):
    with pytest.raises(ParentError, match="not found"):
        inspect_parent(tmp_path / "nowhere")


def test_a_file_is_not_a_parent(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ParentError, match="not a folder"):
        inspect_parent(tmp_path / "model.safetensors")


def test_folder_without_config(base_copy):
    (base_copy / "config.json").unlink()
    with pytest.raises(ParentError, match="no config.json"):
        inspect_parent(base_copy)


def test_invalid_config_json(base_copy):
    (base_copy / "config.json").write_text("{not json")
    with pytest.raises(ParentError, match="not valid JSON"):
        inspect_parent(base_copy)


def test_folder_without_weights(base_copy):
    (base_copy / "model.safetensors").unlink()
    with pytest.raises(ParentError, match="has no weights"):
        inspect_parent(base_copy)


@pytest.mark.parametrize("keep", [0.5, 0.02], ids=["half", "header-only"])
def test_truncated_safetensors(base_copy, keep):
    weights = base_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ParentError, match="corrupt or truncated") as caught:
        inspect_parent(base_copy)
    assert "model.safetensors" in str(caught.value)


def test_truncated_shard(tmp_path):
    make_checkpoint(tmp_path / "sharded", tiny_config("llama"), max_shard_size="100KB")
    shard = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ParentError, match="corrupt or truncated") as caught:
        inspect_parent(tmp_path / "sharded")
    assert shard.name in str(caught.value)


def test_shard_listed_in_the_index_but_missing(tmp_path):
    make_checkpoint(tmp_path / "sharded", tiny_config("llama"), max_shard_size="100KB")
    shard = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(ParentError, match=f"shard {shard.name}.*missing"):
        inspect_parent(tmp_path / "sharded")


def test_pickled_weights_need_allow_pickle(base_copy):
    state = load_file(str(base_copy / "model.safetensors"))
    (base_copy / "model.safetensors").unlink()
    torch.save(state, base_copy / "pytorch_model.bin")
    with pytest.raises(ParentError) as caught:
        inspect_parent(base_copy)
    assert "pickled" in str(caught.value) and "--allow-pickle" in str(caught.value)
    info = inspect_parent(base_copy, allow_pickle=True)
    assert info.shapes == {name: tuple(t.shape) for name, t in state.items()}
    loaded = load_parent(info).tensors
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[n], state[n]) for n in state)


def test_safetensors_are_preferred_over_a_pickle(base_copy):
    torch.save({"evil": torch.zeros(1)}, base_copy / "pytorch_model.bin")
    info = inspect_parent(base_copy)
    assert info.weight_files == [base_copy / "model.safetensors"]
    assert "evil" not in info.shapes


def test_remote_code_needs_trust_remote_code(base_copy):
    config = json.loads((base_copy / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (base_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ParentError) as caught:
        inspect_parent(base_copy)
    assert "auto_map" in str(caught.value) and "--trust-remote-code" in str(caught.value)
    assert inspect_parent(base_copy, trust_remote_code=True).num_layers == 4


def test_different_architectures_are_refused(family):
    llama = inspect_parent(family("llama", "float32")["base"])
    qwen = inspect_parent(family("qwen2", "float32")["base"])
    with pytest.raises(ParentError) as caught:
        check_parents([llama, qwen])
    message = str(caught.value)
    assert "different architectures" in message
    assert "LlamaForCausalLM" in message and "Qwen2ForCausalLM" in message


VOCABULARY_HINT = " (different vocabularies: merge them in one with `tokenizer: {source: union}` in a recipe or `--tokenizer union` in a search)"


@pytest.mark.parametrize(
    "folder, config, other_shape, hint",
    [
        ("small", dict(hidden_size=32, intermediate_size=64), [128, 32], ""),
        ("big-vocab", dict(vocab_size=256), [256, 64], VOCABULARY_HINT),
    ],
    ids=["hidden-size", "vocabulary"],
)
def test_different_shapes_are_refused_naming_the_tensor_and_both_shapes(tmp_path, llama, folder, config, other_shape, hint):
    """The first differing tensor in file order is lm_head.weight; the vocabulary hint is given
    only when the vocabulary (its rows) differs."""
    make_checkpoint(tmp_path / folder, tiny_config("llama", **config))
    with pytest.raises(ParentError) as caught:
        check_parents([inspect_parent(llama["base"]), inspect_parent(tmp_path / folder)])
    assert str(caught.value) == (f"parents differ in shape at lm_head.weight: {llama['base']} [128, 64] vs {tmp_path / folder} {other_shape}{hint}")


def test_different_depths_are_refused(tmp_path, llama):
    make_checkpoint(tmp_path / "deep", tiny_config("llama", num_layers=5))
    with pytest.raises(ParentError, match="different tensors.*layers.4"):
        check_parents([inspect_parent(llama["base"]), inspect_parent(tmp_path / "deep")])


def test_a_merge_needs_two_parents(llama):
    with pytest.raises(ParentError, match="at least two"):
        check_parents([inspect_parent(llama["base"])])


def test_compatible_family_passes(llama):
    check_parents([inspect_parent(llama[name]) for name in ("base", "c1", "c2")])


@pytest.mark.parametrize(
    "name, index",
    [
        ("model.layers.7.mlp.down_proj.weight", 7),
        ("model.layers.0.self_attn.q_proj.weight", 0),
        ("model.layers.31.input_layernorm.weight", 31),
        ("transformer.h.12.attn.c_attn.weight", 12),
        ("h.3.mlp.c_fc.weight", 3),  # GPT-2 saved without its prefix
        ("model.layers.2.mlp.experts.gate_up_proj", 2),
        ("transformer.wte.weight", None),
        ("model.embed_tokens.weight", None),
        ("model.norm.weight", None),
        ("lm_head.weight", None),
    ],
)
def test_layer_index(name, index):
    assert layer_index(name) == index


# ----- LoRA adapters ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_adapter(llama, tmp_path_factory):
    """A PEFT LoRA adapter on the tiny base, with non-zero B so merging it changes the weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base_path = llama["base"].resolve()
    torch.manual_seed(11)
    model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("lora") / "adapter"
    peft_model.save_pretrained(str(out))
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    if adapter_config.get("base_model_name_or_path") != str(base_path):
        adapter_config["base_model_name_or_path"] = str(base_path)
        (out / "adapter_config.json").write_text(json.dumps(adapter_config))
    merged = {n: t.detach().clone() for n, t in peft_model.merge_and_unload().state_dict().items()}
    return out, merged


def test_lora_adapter_loads_as_its_merged_model(lora_adapter, llama):
    adapter, expected = lora_adapter
    info = inspect_parent(adapter)
    base_info = inspect_parent(llama["base"])
    assert info.adapter_base is not None and info.adapter_base.path.resolve() == llama["base"].resolve()
    assert info.shapes == base_info.shapes
    assert info.architecture == base_info.architecture
    check_parents([base_info, info])
    tensors = load_parent(info).tensors
    assert set(tensors) == set(base_info.shapes)
    for name, tensor in tensors.items():
        assert torch.equal(tensor, expected[name]), name
    base = load_file(str(llama["base"] / "model.safetensors"))
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(tensors[q_proj], base[q_proj]), "the adapter changed nothing: the test proves nothing"
    assert torch.equal(tensors["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])


def test_lora_adapter_with_a_missing_base_is_refused(lora_adapter, tmp_path):
    adapter = shutil.copytree(lora_adapter[0], tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "some-org/not-downloaded"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ParentError, match="not a local folder"):
        inspect_parent(adapter)


def test_truncated_lora_adapter_is_refused(lora_adapter, tmp_path):
    adapter = shutil.copytree(lora_adapter[0], tmp_path / "adapter")
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(ParentError, match="corrupt or truncated"):
        inspect_parent(adapter)
