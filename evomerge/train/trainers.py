"""One training stage with TRL: CPT and SFT (SFTTrainer), DPO (DPOTrainer), ORPO (trl.experimental).

`train(TrainSettings(...))` checks the data and the model folder before any work, trains (full or
LoRA), and writes the output folder all at once: the model (or a LoRA adapter evomerge accepts as
a parent, or the adapter merged with `merge_lora`), the tokenizer, and `evomerge_lineage.json`
(parent, strategy, data hash, hyperparameters, and a label such as "Instruct-CPT-SFT-DPO").

Chat-style records (`messages`) are rendered with the model's chat template. A model without one
gets ChatML, as TRL and the alignment handbook give such a model, and says so in one line;
`chat_template` (`--chat-template`) names another: `chatml`, a Jinja file, or a model or tokenizer
folder whose template is copied. The template is saved with the output. Unlike TRL's
`clone_chat_template`, no token is added to the vocabulary (ChatML's markers are tokenised as text):
a parent with a grown vocabulary could no longer be merged with its siblings.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from pydantic.dataclasses import dataclass as pydantic_dataclass

from evomerge.errors import EvomergeError
from evomerge.extras import require
from evomerge.files import LINEAGE_FILE, staged_folder
from evomerge.train.data import STRATEGIES, file_hash, load_records

LOG = logging.getLogger(__name__)

DEFAULT_LR = {"cpt": 5e-5, "sft": 2e-5, "dpo": 5e-7, "orpo": 3e-6}
DEFAULT_BETA = {"dpo": 0.05, "orpo": 0.1}
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")

# ChatML (https://github.com/openai/openai-python/blob/v0.28.1/chatml.md), the template TRL and the
# alignment handbook give a model that has none.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NAMED_TEMPLATES = {"chatml": CHATML}


@pydantic_dataclass
class TrainSettings:
    """One training stage's settings (a pydantic dataclass: values have these types from the start;
    `validate` checks what TRL, transformers or peft would only reject mid-run)."""

    strategy: str
    model: str
    data: str
    out: str
    epochs: float = 1.0
    lr: Optional[float] = None  # default per strategy (DEFAULT_LR)
    batch_size: int = 4
    max_length: int = 512
    beta: Optional[float] = None  # DPO / ORPO (DEFAULT_BETA)
    seed: int = 0
    device: str = "auto"
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    max_steps: int = -1
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    merge_lora: bool = False
    overwrite: bool = False
    # Recompute activations in the backward pass (TRL's default): saves memory on large models,
    # costs time; tiny models on a CPU train faster without it.
    gradient_checkpointing: bool = True
    label: Optional[str] = None  # the lineage's label; default: the parent's label + "-" + STRATEGY
    chat_template: Optional[str] = None  # chatml, a Jinja file or a model folder; default: the model's, else ChatML

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.strategy]

    @property
    def beta_value(self) -> Optional[float]:
        """β of DPO / ORPO (DEFAULT_BETA unless given); None for the other strategies."""
        return self.beta if self.beta is not None else DEFAULT_BETA.get(self.strategy)

    def validate(self) -> None:
        """Numbers and names that TRL, transformers or peft would only reject mid-run."""
        from transformers.trainer_utils import SchedulerType

        if self.strategy not in STRATEGIES:
            raise EvomergeError(f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        positive = {"epochs": self.epochs, "lr": self.learning_rate, "batch_size": self.batch_size, "max_length": self.max_length}
        if self.beta is not None:
            positive["beta"] = self.beta
        if self.lora:
            positive.update(lora_r=self.lora_r, lora_alpha=self.lora_alpha)
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise EvomergeError(f"--{name.replace('_', '-')} must be a positive number, got {value!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise EvomergeError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        schedulers = [s.value for s in SchedulerType]
        if self.lr_scheduler not in schedulers:
            raise EvomergeError(f"unknown --lr-scheduler {self.lr_scheduler!r}; choose from {', '.join(schedulers)}")
        if self.lora and not self.lora_targets:
            raise EvomergeError("--lora-targets names no module")
        if self.lora and "lm_head" in self.lora_targets:
            raise EvomergeError("--lora-targets: TRL does not train LoRA on lm_head; choose attention or MLP modules")


@dataclass
class TrainResult:
    out: Path
    losses: list[float]
    lineage: dict
    note: Optional[str] = None  # one line worth telling the user (a chat template chosen for them)


def resolve_chat_template(choice: str) -> str:
    """`--chat-template`: a name (`chatml`), a Jinja file, or a model or tokenizer folder with a
    chat template (in tokenizer_config.json or chat_template.jinja)."""
    if choice.lower() in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[choice.lower()]
    path = Path(choice).expanduser()
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise EvomergeError(f"--chat-template {choice}: the file is empty")
        return text
    if path.is_dir():
        jinja = path / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8")
        config = path / "tokenizer_config.json"
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template") if config.is_file() else None
        if isinstance(template, str) and template.strip():
            return template
        raise EvomergeError(f"--chat-template {choice}: the folder has no chat template (chat_template.jinja or tokenizer_config.json)")
    names = ", ".join(NAMED_TEMPLATES)
    raise EvomergeError(f"--chat-template {choice!r} is neither a known template ({names}) nor a Jinja file or a model folder")


def choose_chat_template(settings: "TrainSettings", model_template: Optional[str], uses_messages: bool) -> tuple[Optional[str], Optional[str]]:
    """(template to train with, or None to leave the tokenizer's; one line to tell the user, or None)."""
    if settings.chat_template is not None:
        return resolve_chat_template(settings.chat_template), None
    if uses_messages and not model_template:
        return CHATML, f"{settings.model} has no chat template: training on messages with ChatML (saved with the model; --chat-template to choose another)"
    return None, None


def check_model_folder(path: Path) -> None:
    if not path.is_dir():
        raise EvomergeError(f"model folder not found: {path}")
    if not (path / "config.json").is_file():
        raise EvomergeError(f"{path} has no config.json (not a Hugging Face model folder)")
    if not ((path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()):
        raise EvomergeError(f"{path} has no weights (model.safetensors or model.safetensors.index.json)")


def lineage_label(model_dir: Path) -> str:
    """The label of a model: its lineage's label, else its folder name ("Instruct")."""
    lineage = model_dir / LINEAGE_FILE
    if lineage.is_file():
        return json.loads(lineage.read_text())["label"]
    return model_dir.name


def default_label(parent_dir: Path, strategy: str) -> str:
    """What training `parent_dir` with `strategy` is called: "Instruct-CPT" → "Instruct-CPT-SFT"."""
    return f"{lineage_label(parent_dir)}-{strategy.upper()}"


def check(settings: TrainSettings) -> list[dict]:
    """Everything that can be checked before training: strategy, data, model folder, output,
    LoRA options (against the model's modules, built on the meta device: no weights read)."""
    require("trl", "evomerge train")
    settings.validate()
    records = load_records(settings.data, settings.strategy)
    model_dir = Path(settings.model).resolve()
    check_model_folder(model_dir)
    out = Path(settings.out)
    if out.exists() and any(out.iterdir()) and not settings.overwrite:
        raise EvomergeError(f"output folder {out} exists and is not empty (pass --overwrite to replace it)")
    if settings.merge_lora and not settings.lora:
        raise EvomergeError("--merge-lora needs --lora")
    if settings.chat_template is not None:
        resolve_chat_template(settings.chat_template)
    _use_cuda(settings.device)
    if settings.lora:
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model_dir)))
        _lora_config(settings, skeleton)
    return records


def train(settings: TrainSettings, on_log: Optional[Callable[[int, int, float], None]] = None) -> TrainResult:
    """Run one stage; `on_log(step, total_steps, loss)` is called as the loss is logged."""
    records = check(settings)
    model_dir = Path(settings.model).resolve()
    out = Path(settings.out)

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    template, note = choose_chat_template(settings, tokenizer.chat_template, "messages" in records[0])
    if template is not None:
        tokenizer.chat_template = template
    if note:
        LOG.info(note)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    peft_config = _lora_config(settings, model) if settings.lora else None

    class ReportLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if on_log is not None and logs and "loss" in logs:
                on_log(state.global_step, state.max_steps, float(logs["loss"]))

    with staged_folder(out) as staging:
        trainer = _make_trainer(settings, model, tokenizer, Dataset.from_list(records), peft_config, staging / "trainer")
        if len(trainer.train_dataset) == 0:
            raise EvomergeError(f"{settings.data}: no example fits --max-length {settings.max_length}; raise it")
        trainer.remove_callback(PrinterCallback)  # it prints every log dict when tqdm is off
        trainer.add_callback(ReportLoss())
        trainer.train()
        losses = [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
        shutil.rmtree(staging / "trainer", ignore_errors=True)
        trained = trainer.model
        if settings.lora and settings.merge_lora:
            trained = trained.merge_and_unload()
        trained.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        if settings.lora and not settings.merge_lora:
            _point_adapter_at(staging, model_dir)
        lineage = _lineage(settings, model_dir, losses)
        (staging / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2), encoding="utf-8")
    return TrainResult(out, losses, lineage, note)


def _lora_config(settings: TrainSettings, model):
    from peft import LoraConfig

    modules = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [target for target in settings.lora_targets if target not in modules]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)} - {"lm_head"})
        raise EvomergeError(f"--lora-targets: the model has no module {missing[0]!r}; its linear modules are {', '.join(linear)}")
    return LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, target_modules=list(settings.lora_targets), task_type="CAUSAL_LM")


def _make_trainer(settings: TrainSettings, model, tokenizer, dataset, peft_config, output_dir: Path):
    cuda = _use_cuda(settings.device)
    common = dict(
        output_dir=str(output_dir),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=float(settings.warmup_ratio),  # transformers 5: a float in [0, 1) is a ratio
        seed=settings.seed,
        data_seed=settings.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        gradient_checkpointing=settings.gradient_checkpointing,
        # TRL turns on bf16 autocast by default; on a CPU without bf16 units that runs the matmuls
        # through a slow emulation (about 10x slower than float32 on this project's CI machine).
        bf16=cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
    )
    if settings.strategy in ("cpt", "sft"):
        from trl import SFTConfig, SFTTrainer

        config = SFTConfig(
            max_length=settings.max_length,
            packing=settings.strategy == "cpt",  # CPT packs raw text into full-length blocks
            # "wrapped": concatenate and cut into [batch, max_length] blocks. TRL's default ("bfd")
            # flattens a batch into one padding-free sequence, which only FlashAttention handles
            # efficiently; with SDPA (CPUs, most GPUs) attention then spans the whole batch.
            packing_strategy="wrapped",
            dataset_text_field="text",
            **common,
        )
        return SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    if settings.strategy == "dpo":
        from trl import DPOConfig, DPOTrainer

        config = DPOConfig(beta=settings.beta_value, max_length=settings.max_length, **common)
        return DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    config = ORPOConfig(beta=settings.beta_value, max_length=settings.max_length, **common)
    return ORPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)


def _use_cuda(device: str) -> bool:
    if device == "auto":
        return torch.cuda.is_available()
    if device == "cuda" and not torch.cuda.is_available():
        raise EvomergeError("--device cuda asked for, but torch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise EvomergeError(f"unknown device {device!r}; use auto, cpu or cuda")
    return device == "cuda"


def _point_adapter_at(folder: Path, base: Path) -> None:
    """An adapter's base is the absolute path of the model it was trained on, so evomerge (and
    peft) find it from anywhere."""
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(base)
    config_path.write_text(json.dumps(config, indent=2))


def _lineage(settings: TrainSettings, model_dir: Path, losses: list[float]) -> dict:
    hyper = {k: v for k, v in asdict(settings).items() if k not in ("model", "data", "out", "overwrite", "label")}
    hyper["lr"] = settings.learning_rate
    if settings.strategy in DEFAULT_BETA:
        hyper["beta"] = settings.beta_value
    return {
        "label": settings.label or default_label(model_dir, settings.strategy),
        "parent_model": str(model_dir),
        "parent_label": lineage_label(model_dir),
        "strategy": settings.strategy,
        "data": str(Path(settings.data).resolve()),
        "data_sha256": file_hash(settings.data),
        "hyperparameters": hyper,
        "adapter": settings.lora and not settings.merge_lora,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }
