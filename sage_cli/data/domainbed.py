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

from ..catalog import DATASETS
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
        y = x.to(torch.float32, copy=True) if out is None else out.copy_(x)
        return y.div_(255).sub_(mean).div_(std)  # in place: the same three operations' bits


def normalization_for(name: str) -> Normalize:
    return Normalize(*((CLIP_MEAN, CLIP_STD) if name == "clip" else (IMAGENET_MEAN, IMAGENET_STD)))


def build_transforms(image_size: int):
    """(training augmentation, evaluation resize), both PIL image → uint8 (3, H, W); normalisation comes later,
    on the device (``Normalize``). DomainBed's augmentation (facebookresearch/DomainBed, datasets.py)."""
    from torchvision import transforms as T

    train = T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.7, 1.0)),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.3, 0.3, 0.3, 0.3),
        T.RandomGrayscale(),
        T.PILToTensor(),
    ])
    evaluate = T.Compose([T.Resize((image_size, image_size)), T.PILToTensor()])
    return train, evaluate


class FolderEnv:
    """One environment's images; ``load(i, train, seed)`` decodes and transforms image i into uint8 (3, H, W).

    Augmentation draws from torch's CPU generator seeded per item (and set back after), so a batch is the same
    whatever order, process or worker loads it in, and a resumed run sees the same images as an uninterrupted
    one. Evaluation pixels come from ``pixels`` (the evaluation cache, uint8, memory-mapped) when attached.
    """

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


@dataclass(frozen=True)
class FolderSpec:
    directory: str
    envs: tuple[str, ...]
    n_classes: int


SPECS = {  # folder under the data root, envs (the catalog's), DomainBed's class count
    name: FolderSpec(directory, DATASETS.entry(name).envs, n_classes)
    for name, directory, n_classes in [("pacs", "PACS", 7), ("vlcs", "VLCS", 5), ("officehome", "office_home", 65),
                                       ("terraincognita", "terra_incognita", 10), ("domainnet", "domain_net", 345)]
}


def folder_dataset(name: str):
    """The dataset class for one DomainBed layout."""
    spec = SPECS[name]

    class FolderDataset:
        ENVIRONMENTS = list(spec.envs)
        N_CLASSES = spec.n_classes
        INPUT_SHAPE = (3, 224, 224)

        def __init__(self, root=None, image_size: int = 224, normalization: str = "imagenet",
                     corrupt_images: str = "fail"):
            base = data_root(root) / spec.directory
            if not base.is_dir():
                raise UserError(f"{name}: expected the DomainBed folder {base} (envs {', '.join(spec.envs)})")
            found = scan(base, list(spec.envs))
            if found.problems:
                raise UserError(f"{name}: {found.problems[0]}"
                                + (f" (and {len(found.problems) - 1} more problems)" if len(found.problems) > 1 else ""))
            self.classes = found.classes
            self.input_shape = (3, image_size, image_size)
            self.base, self.image_size = base, image_size
            transforms, normalize = build_transforms(image_size), normalization_for(normalization)
            self.datasets = [FolderEnv(s, transforms, normalize, corrupt_images) for s in found.samples]

    FolderDataset.__name__ = FolderDataset.__qualname__ = f"{spec.directory}Dataset"
    return FolderDataset


PACS, VLCS, OfficeHome = folder_dataset("pacs"), folder_dataset("vlcs"), folder_dataset("officehome")
TerraIncognita, DomainNet = folder_dataset("terraincognita"), folder_dataset("domainnet")
