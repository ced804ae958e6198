"""DomainBed's image datasets from disk: ``root/<DIR>/<env>/<class>/<image>``.

Environments are the sorted env folders of DomainBed's layout (facebookresearch/DomainBed,
``domainbed/datasets.py`` sorts them); every env must hold the
same class folders. Images are opened lazily; a corrupt one either stops the run with its path (default) or,
with ``dataset.corrupt_images: skip``, is dropped with a warning and counted.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def data_root(root: str | None, must_exist: bool = True) -> Path:
    """The recipe's ``dataset.root``, else $SAGE_DATA."""
    chosen = root or os.environ.get("SAGE_DATA")
    if not chosen:
        raise UserError("no data root: set the SAGE_DATA environment variable (or dataset.root in a recipe, --root "
                        "where a command takes it)")
    path = Path(chosen).expanduser()
    if must_exist and not path.is_dir():
        raise UserError(f"data root {path} does not exist")
    return path


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


@dataclass
class Scan:
    """What is on disk for one dataset: per env, (path, label) samples; and everything found wrong."""

    envs: list[str]
    classes: list[str]
    samples: list[list[tuple[Path, int]]]
    problems: list[str] = field(default_factory=list)


def scan(base: Path, envs: list[str]) -> Scan:
    problems: list[str] = []
    classes: list[str] | None = None
    samples: list[list[tuple[Path, int]]] = []
    for env in envs:
        env_dir = base / env
        if not env_dir.is_dir():
            problems.append(f"missing env folder {env_dir}")
            samples.append([])
            continue
        env_classes = sorted(d.name for d in env_dir.iterdir() if d.is_dir())
        if classes is None:
            classes = env_classes
        elif env_classes != classes:
            missing = sorted(set(classes) - set(env_classes))
            extra = sorted(set(env_classes) - set(classes))
            problems.append(f"class folders of {env_dir} differ from {base / envs[0]}: "
                            f"missing {missing[:5]}, extra {extra[:5]}")
        index = {c: i for i, c in enumerate(classes)}
        env_samples = [(p, index[c]) for c in env_classes if c in index for p in _image_files(env_dir / c)]
        if not env_samples:
            problems.append(f"env folder {env_dir} holds no images")
        samples.append(env_samples)
    return Scan(list(envs), classes or [], samples, problems)


def verify_images(samples: list[tuple[Path, int]]) -> list[Path]:
    """Paths among ``samples`` that PIL cannot read."""
    from PIL import Image

    bad = []
    for path, _ in samples:
        try:
            with Image.open(path) as im:
                im.convert("RGB").load()
        except Exception:  # PIL raises many types for truncated or foreign files
            bad.append(path)
    return bad


_CPU_BLOCK_BYTES = 8 << 20


class Normalize:
    """uint8 pixels (N, 3, H, W) → (x/255 − mean)/std in float32, on whatever device they are: the arithmetic of
    torchvision's ``ToTensor`` + ``Normalize``, so the model sees the same bits, but 4× fewer bytes cross from the
    loader to the device."""

    def __init__(self, mean, std):
        self.mean, self.std = tuple(mean), tuple(std)
        self._on: dict = {}

    def _stats(self, device):
        if device not in self._on:
            self._on[device] = tuple(torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)
                                     for v in (self.mean, self.std))
        return self._on[device]

    def __getstate__(self):  # a worker process gets the numbers, not device tensors
        return {**self.__dict__, "_on": {}}

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``out``: a float32 tensor of x's shape to write into (a caller that consumes each batch before the next
        reuses one: a fresh 150 MB tensor per batch costs more in page faults than the arithmetic on a CPU)."""
        mean, std = self._stats(x.device)
        y = torch.empty(x.shape, dtype=torch.float32, device=x.device) if out is None else out
        # On a CPU the four passes run over blocks of about 8 MB, which stay in the last-level cache, instead of over
        # a whole batch from memory: 1.6–2× the images per second at 224² on a 2-core VM (32 MB L3), with OpenMP's
        # idle threads sleeping or spinning; smaller blocks lose it again to waking threads. A GPU takes it whole.
        block = _CPU_BLOCK_BYTES * len(x) // max(4 * x.numel(), 1) if x.device.type == "cpu" else len(x)
        step = max(block, 1)
        for i in range(0, len(x), step):
            y[i:i + step].copy_(x[i:i + step]).div_(255).sub_(mean).div_(std)  # in place: the same operations' bits
        return y


def normalization_for(name: str) -> Normalize:
    return Normalize(*((CLIP_MEAN, CLIP_STD) if name == "clip" else (IMAGENET_MEAN, IMAGENET_STD)))


def build_transforms(image_size: int, train: str = "domainbed", evaluate: str = "resize"):
    """(training augmentation, evaluation transform), both PIL image → uint8 (3, H, W); normalisation comes later,
    on the device (``Normalize``). ``train``: ``domainbed`` (facebookresearch/DomainBed ``domainbed/datasets.py``:
    RandomResizedCrop(scale 0.7–1, bilinear), flip, ColorJitter 0.3, RandomGrayscale) or ``disam``
    (MediaBrain-SJTU/DISAM ``code/configs/default.py`` ``default_transform_train``: bicubic crop, ColorJitter 0.4).
    ``evaluate``: ``resize`` (DomainBed: Resize((S, S))) or ``center_crop`` (DISAM's ``default_transform_test``:
    bicubic Resize(S) of the short side, CenterCrop(S))."""
    from torchvision import transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    jitter, crop = {"domainbed": (0.3, {}), "disam": (0.4, {"interpolation": bicubic})}[train]
    augment = T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.7, 1.0), **crop),
        T.RandomHorizontalFlip(),
        T.ColorJitter(jitter, jitter, jitter, jitter),
        T.RandomGrayscale(),
        T.PILToTensor(),
    ])
    resize = ([T.Resize((image_size, image_size))] if evaluate == "resize"
              else [T.Resize(image_size, interpolation=bicubic), T.CenterCrop(image_size)])
    return augment, T.Compose([*resize, T.PILToTensor()])


class FolderEnv:
    """One environment's images; ``load(i, train, seed)`` decodes and transforms image i into uint8 (3, H, W).

    Augmentation draws from torch's CPU generator seeded per item (and set back after), so a batch is the same
    whatever order, process or worker loads it in, and a resumed run sees the same images as an uninterrupted
    one. Evaluation pixels come from ``pixels`` (the evaluation cache, uint8, memory-mapped) when attached.
    """

    worker_imports = ("PIL.Image", "torchvision.transforms")  # imported when an image is first read; see pipeline

    def __init__(self, samples, transforms, normalize: Normalize, corrupt_images: str = "fail"):
        self.samples = samples
        self.labels = torch.tensor([y for _, y in samples], dtype=torch.long)
        self.train_transform, self.eval_transform = transforms
        self.normalize = normalize
        self.corrupt_images = corrupt_images
        self.skipped: set[Path] = set()
        self.pixels = None  # numpy (N, 3, S, S) uint8: the evaluation cache, see data/eval_cache.py

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self):  # what a worker process needs: never the memory map
        return {**self.__dict__, "pixels": None}

    def _open(self, path: Path):
        from PIL import Image

        with Image.open(path) as im:
            return im.convert("RGB")

    def load(self, i: int, train: bool, seed: int = 0):
        path, label = self.samples[i]
        try:
            image = self._open(path)
        except Exception as exc:
            if self.corrupt_images == "fail":
                raise UserError(f"cannot read image {path} ({type(exc).__name__}); fix or remove it, or set "
                                "dataset.corrupt_images: skip") from None
            if path not in self.skipped:
                self.skipped.add(path)
                warnings.warn(f"skipping unreadable image {path} ({len(self.skipped)} skipped so far)",
                              stacklevel=2)
            return self.load((i + 1) % len(self.samples), train, seed)
        if not train:
            return self.eval_transform(image), label
        # only the CPU generator: torch.manual_seed would also reseed (and fork_rng save) every CUDA device's
        generator = torch.random.default_generator
        saved = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self.train_transform(image), label
        finally:
            generator.set_state(saved)

    def batch_pixels(self, indices, out: torch.Tensor | None = None):
        """Evaluation pixels of ``indices`` from the cache (uint8, into ``out`` when given), or None when no cache
        is attached."""
        if self.pixels is None:
            return None
        import numpy as np

        index = np.asarray(indices, dtype=np.int64)
        x = torch.from_numpy(np.take(self.pixels, index, axis=0, out=None if out is None else out.numpy()))
        return x, self.labels[torch.as_tensor(index)]


def read_official_split(card, base: Path, samples: list[list[tuple[Path, int]]]) -> list[tuple[list[int], list[int]]]:
    """Per env, (train indices, validation indices) into ``samples`` from the card's official split files
    (``card.split_files``; lines ``<env>/<class>/<file> <1-based label>``). Every listed image must be on disk
    with the label its class folder gives; a missing file or image is a one-line error."""
    if not card.split_files:
        raise UserError(f"{card.name} has no official split files; use dataset.split: holdout")
    out = []
    for env, env_samples in zip(card.envs, samples):
        index = {p.relative_to(base).as_posix(): i for i, (p, _) in enumerate(env_samples)}
        parts = []
        for part in card.split_parts:
            path = base / card.split_files.format(env=env, part=part)
            if not path.is_file():
                raise UserError(f"{card.name}: dataset.split: official needs the split file {path} (the dataset "
                                "authors' train/crossval lists; PACS's are in DISAM's code/data/PACS_split_txt.zip)")
            chosen = []
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                rel, _, label = line.strip().rpartition(" ")
                i = index.get(rel)
                if i is None or not label.isdigit() or env_samples[i][1] != int(label) - 1:
                    what = "is not on disk" if i is None else f"has label {label}, its folder says {env_samples[i][1] + 1}"
                    raise UserError(f"{path}:{n}: {rel} {what}")
                chosen.append(i)
            parts.append(chosen)
        out.append((parts[0], parts[1]))
    return out


class FolderDataset:
    """One DomainBed-layout folder, as its card describes it: ``.datasets`` (a ``FolderEnv`` per env, in the
    card's order), ``.classes``, ``.input_shape``, and ``.official`` (the official train/validation indices
    per env, when asked for with ``official_split=True``)."""

    INPUT_SHAPE = (3, 224, 224)

    def __init__(self, root=None, image_size: int = 224, normalization: str = "imagenet",
                 corrupt_images: str = "fail", *, card, train_transform: str = "domainbed",
                 eval_transform: str = "resize", official_split: bool = False):
        base = data_root(root) / card.directory
        if not base.is_dir():
            raise UserError(f"{card.name}: expected the DomainBed folder {base} (envs {', '.join(card.envs)})")
        found = scan(base, list(card.envs))
        if found.problems:
            raise UserError(f"{card.name}: {found.problems[0]}"
                            + (f" (and {len(found.problems) - 1} more problems)" if len(found.problems) > 1 else ""))
        self.card, self.classes = card, found.classes
        self.input_shape = (3, image_size, image_size)
        self.base, self.image_size, self.eval_transform = base, image_size, eval_transform
        transforms = build_transforms(image_size, train_transform, eval_transform)
        normalize = normalization_for(normalization)
        self.datasets = [FolderEnv(s, transforms, normalize, corrupt_images) for s in found.samples]
        self.official = read_official_split(card, base, found.samples) if official_split else None
