"""The plain sections of a recipe (dataset, backbone, training, sweep, SLURM, tracking). The sections that
pick a part by name (optimizer, objective, aggregator) are the parts' own settings classes."""

from __future__ import annotations

import os
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from .catalog import DATASETS, MODELS, dataset_kind
from .settings import Section, non_defaults
from .settings.distributions import DOMAINBED, ByDataset, Dist


class DatasetConfig(Section):
    name: str = "rotated_digits"
    root: str | None = None
    test_envs: list[int] = Field(default_factory=lambda: [0], min_length=1)  # DG only
    holdout_fraction: float = Field(0.2, gt=0, lt=1)  # DG only
    image_size: int = Field(224, gt=0)  # image datasets on disk
    corrupt_images: Literal["fail", "skip"] = "fail"
    # the protocol's data settings (protocols.py presets them): holdout = a seeded holdout_fraction of each env
    # for validation; official = the dataset's official train/validation split files (its card's), where it has
    # them, else the seeded holdout. Transforms: see data/domainbed.py build_transforms
    split: Literal["holdout", "official"] = "holdout"
    train_transform: Literal["domainbed", "disam"] = "domainbed"
    eval_transform: Literal["resize", "center_crop"] = "resize"
    # how images are loaded, never what they are (not part of a run's identity): worker processes that decode
    # training batches ahead of the step (auto: the CPUs this process may use, minus one; 0: in the training
    # process), and evaluation from a uint8 cache of the resized images (see data/eval_cache.py)
    workers: Literal["auto"] | int = Field("auto")
    eval_cache: bool = True
    cache_dir: str | None = None  # default: $SAGE_CACHE, else <data root>/.sage-cache

    @field_validator("workers")
    @classmethod
    def _workers(cls, v):
        if v != "auto" and v < 0:
            raise ValueError("workers must be auto or a count >= 0")
        return v

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        return DATASETS.check(v)

    @model_validator(mode="after")
    def _envs_in_range(self):
        if dataset_kind(self.name) == "mtl":  # tasks, not environments
            return self
        envs = DATASETS.entry(self.name).envs
        n = len(envs)
        if len(set(self.test_envs)) != len(self.test_envs):  # [5, 5] is [5]: one spelling, one identity
            raise ValueError(f"test env {next(e for e in self.test_envs if self.test_envs.count(e) > 1)} is "
                             "listed twice; list each test env once")
        for env in self.test_envs:
            if not 0 <= env < n:
                raise ValueError(f"test env {env} is out of range: {self.name} has envs 0..{n - 1}")
        if len(set(self.test_envs)) >= n:
            raise ValueError(f"every env of {self.name} is a test env: nothing is left to train on")
        return self

    @property
    def kind(self) -> str:
        return dataset_kind(self.name)


DG_ONLY_DATASET = ("test_envs", "holdout_fraction", "image_size", "corrupt_images", "split", "train_transform",
                   "eval_transform")
DATASET_NOT_IDENTITY = ("workers", "eval_cache", "cache_dir")


class BackboneConfig(Section):
    name: str = "small_cnn"
    pretrained: str | None = None  # a tag (open_clip's, or torchvision's for resnet50) or a weights file; null = random init
    model: str | None = None  # open_clip architecture (clip): ViT-B-16 by default
    head: Literal["linear", "zeroshot"] = "linear"
    prompt: str = "a photo of a {c}."
    freeze_bn: bool = False  # resnet50: BatchNorm statistics frozen, as in DomainBed
    # clip: which parameters train (models/clip.py): full fine-tuning, linear probing (the head), or VPT (Jia et
    # al., ECCV 2022: prompt tokens and the head); prompt_tokens and prompt_depth act under vpt only
    tuning: Literal["full", "vpt", "linear"] = "full"
    prompt_tokens: int = Field(10, gt=0)
    prompt_depth: Literal["shallow", "deep"] = "deep"

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        return MODELS.check(v)

    @model_validator(mode="after")
    def _prompts_need_vpt(self):
        if self.tuning != "vpt":
            for key in ("prompt_tokens", "prompt_depth"):
                if key in self.model_fields_set and getattr(self, key) != type(self).model_fields[key].default:
                    raise ValueError(f"{key} acts only with tuning: vpt (tuning is {self.tuning})")
        return self

    def idle(self) -> set[str]:
        """Prompt settings without VPT."""
        return {"prompt_tokens", "prompt_depth"} if self.tuning != "vpt" else set()

    def identity(self) -> dict:
        entry = MODELS.entry(self.name)
        revision = {"revision": entry.revision} if entry.revision else {}
        return {"name": self.name, **revision, **{k: v for k, v in non_defaults(self).items()
                                                  if k in entry.settings and k not in self.idle()}}


class TrainingConfig(Section):
    # random search (``search/``): the batch size's distribution, DomainBed's
    search: ClassVar[dict] = {"batch_size": ByDataset(
        Dist("log2", (3, 5.5), int, "batch_size", DOMAINBED), small=Dist("log2", (3, 9), int, "batch_size", DOMAINBED),
        named={"DomainNet": Dist("log2", (3, 5), int, "batch_size", DOMAINBED)})}
    steps: int = Field(5001, gt=0)
    batch_size: int = Field(32, gt=0)
    checkpoint_freq: int = Field(300, gt=0)
    seed: int = Field(0, ge=0, lt=2**63)  # torch.manual_seed takes a signed 64-bit integer
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # tf32: fp32 storage, TF32 matmuls and convolutions on CUDA (no effect on a CPU); bf16: forward and backward
    # passes under bfloat16 autocast, parameters and optimizer state in fp32
    precision: Literal["fp32", "tf32", "bf16"] = "tf32"
    # deterministic algorithms (CUDA: cuBLAS workspace, no cuDNN benchmark); off: cuDNN picks the fastest
    # kernels and convnets run channels_last. Not part of the identity: it changes bits, not what is computed
    deterministic: bool = False
    # per_env: batch_size from every training env each step (DomainBed); uniform: batch_size in all, each
    # image's env drawn uniformly (the paper's "batch 12 sampled uniformly across source domains")
    # concat: batch_size from one shuffled concatenation of the training envs' images, without replacement within
    # an epoch, the last partial batch dropped (DISAM's DataLoader over a ConcatDataset)
    batch_sampling: Literal["per_env", "uniform", "concat"] = "per_env"
    # DG length: steps (training.steps, evaluated every checkpoint_freq steps) or epochs (training.epochs passes
    # over the training images, evaluated after each); which checkpoint a run's own summary selects, and on
    # which part of the test env it is judged (in: its in split, as DomainBed; all: every image of it)
    unit: Literal["steps", "epochs"] = "steps"
    selection: Literal["training_domain", "merged_source", "oracle"] = "training_domain"
    test_split: Literal["in", "all"] = "in"
    output_dir: str = "runs"  # checkpoints for resume: <output_dir>/<recipe hash>/
    epochs: int = Field(200, gt=0)  # MTL: epochs, and the StepLR schedule; DG: with unit: epochs
    lr_step_epochs: int = Field(100, gt=0)
    lr_gamma: float = Field(0.5, gt=0)
    report_epochs: int = Field(10, gt=0)  # MTL results are the mean over the last N epochs (the references': 10)

    @field_validator("output_dir")
    @classmethod
    def _home(cls, value: str) -> str:
        """``~/runs`` means the home folder's, as in a shell (not a folder named ``~``)."""
        return os.path.expanduser(value)


# what acts only on one kind of dataset (left out of the other kind's identity); where it runs never acts
TRAINING_ONLY = {"dg": ("steps", "checkpoint_freq", "batch_sampling", "unit", "selection", "test_split"),
                 "mtl": ("epochs", "lr_step_epochs", "lr_gamma", "report_epochs")}
TRAINING_NOT_IDENTITY = ("device", "output_dir", "deterministic")


class DiagnosticsConfig(Section):
    """The two terms of Theorem 1 (``sage diagnose``) measured along training as ``diag_*`` metrics. An
    observation on fixed batches in eval mode: it moves no parameter and draws from no training RNG, so it is
    not part of a run's identity (a run with and without it trains identically)."""

    every: int = Field(0, ge=0)  # every N-th checkpoint (the first included); 0: off
    batches: int = Field(2, gt=0)  # fixed batches of training.batch_size per distribution
    probes: int = Field(8, gt=1)  # Hutchinson probes for tr(H̄)
    damping: float = Field(1e-2, ge=0)  # λ of the CG solves (H̄ + λI)⁻¹ (raised where H̄ has negative curvature)
    cg_iters: int = Field(20, gt=0)
    power_iters: int = Field(10, gt=0)  # for λ_max(H̄)


class SweepConfig(Section):
    """The protocol a sweep expands this recipe into (``sage ablate`` / ``sage sweep``); ``sage run`` runs
    one point of it (the recipe's own seed and test envs). Not part of a run's identity."""

    seeds: list[int] = Field(default_factory=lambda: [0])
    # all: leave-one-domain-out over every env; pairs: also every pair of envs held out (for LOO selection);
    # a list's entry may be a list of envs held out together, e.g. [5, [0, 5], [1, 5]]
    test_envs: Literal["all", "pairs"] | list[int | list[int]] = "all"
    # a random search's early stopping (an experiment's search.prune, set on each of its jobs): a draw whose
    # training-domain validation accuracy falls below its peers' median (or out of ASHA's top 1/asha_eta) at a
    # checkpoint stops there, marked pruned
    prune: Literal["none", "median", "asha"] = "none"
    asha_eta: int = Field(3, ge=2)


class SlurmConfig(Section):
    """How `--launcher slurm` submits (through submitit); also accepted in experiment files."""

    partition: str | None = None
    timeout_min: int = Field(60, gt=0)
    mem_gb: float = Field(8, gt=0)  # always requested: with CR_Core_Memory a job without --mem takes the node
    cpus_per_task: int | None = Field(None, gt=0)  # default: a GPU job's loader workers + 1 (workers auto: 8 + 1), else 2
    gpus_per_node: int = Field(0, ge=0)  # a recipe with training.device: cuda gets 1 when this is 0
    array_parallelism: int = Field(64, gt=0)
    setup: list[str] = Field(default_factory=list)  # shell lines run before the job (module load, …)
    additional_parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)


class TrackingConfig(Section):
    uri: str | None = None
    experiment: str = "sage"
    label: str | None = None  # the row label in reports (a sweep sets it from the experiment's method names)
    # a random search's draw (set by the sweep): its index (0 = the recipe's values) and the settings it drew
    draw: int | None = Field(None, ge=0)
    searched: list[str] = Field(default_factory=list)
