"""Every built-in dataset, backbone, objective and optimizer method, by name → where it lives.

Adding a method is one short module plus one line here. Names resolve lazily, so checking a recipe never
imports torch.
"""

from __future__ import annotations

from .registry import Registry

# Environments of each dataset, in DomainBed's order (sorted folder names): recipe checks need their count.
DATASET_ENVS: dict[str, list[str]] = {
    "rotated_digits": ["0", "15", "30", "45", "60", "75"],
    "pacs": ["art_painting", "cartoon", "photo", "sketch"],
    "vlcs": ["Caltech101", "LabelMe", "SUN09", "VOC2007"],
    "officehome": ["Art", "Clipart", "Product", "Real World"],
    "terraincognita": ["location_100", "location_38", "location_43", "location_46"],
    "domainnet": ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"],
}

DATASETS = Registry("dataset", {
    "rotated_digits": "sage_cli.data.digits:RotatedDigits",
    "pacs": "sage_cli.data.domainbed:PACS",
    "vlcs": "sage_cli.data.domainbed:VLCS",
    "officehome": "sage_cli.data.domainbed:OfficeHome",
    "terraincognita": "sage_cli.data.domainbed:TerraIncognita",
    "domainnet": "sage_cli.data.domainbed:DomainNet",
    # multi-task benchmarks (trained by sage_cli.mtl.train)
    "nyuv2": "sage_cli.mtl.data:DenseDataset",
    "cityscapes": "sage_cli.mtl.data:DenseDataset",
    "mtl_digits": "sage_cli.mtl.data:DigitPairs",
})
MTL_DATASETS = {"nyuv2", "cityscapes", "mtl_digits"}

MODELS = Registry("backbone", {
    "small_cnn": "sage_cli.models.cnn:small_cnn",
    "clip": "sage_cli.models.clip:clip",
    "clip_vit_b16": "sage_cli.models.clip:clip_vit_b16",
    "resnet50": "sage_cli.models.resnet:resnet50",
    "mtan": "sage_cli.mtl.models:MTAN",
    "mtan_narrow": "sage_cli.mtl.models:MTAN",
    "digit_pairs_cnn": "sage_cli.mtl.models:DigitPairsNet",
})

OBJECTIVES = Registry("objective", {
    "erm": "sage_cli.objectives:ERM",
    "irm": "sage_cli.objectives.penalties:IRM",
    "vrex": "sage_cli.objectives.penalties:VREx",
    "mmd": "sage_cli.objectives.penalties:MMD",
    "coral": "sage_cli.objectives.penalties:CORAL",
    "dann": "sage_cli.objectives.adversarial:DANN",
    "cdann": "sage_cli.objectives.adversarial:CDANN",
    "rsc": "sage_cli.objectives.rsc:RSC",
    "fish": "sage_cli.objectives.fish:Fish",
    "iib": "sage_cli.objectives.iib:IIB",
})

METHODS = Registry("optimizer method", {
    name: f"sage_cli.optim.builders:{name}"
    for name in ("erm", "sage", "sam", "asam", "gsam", "sagm", "disam", "gam", "gga", "sgld", "muon", "samo", "fmtl")
})

AGGREGATORS = Registry("aggregator", {
    "ls": "sage_cli.mtl.aggregators:LS",
    "stl": "sage_cli.mtl.aggregators:STL",
    "si": "sage_cli.mtl.aggregators:SI",
    "rlw": "sage_cli.mtl.aggregators:RLW",
    "dwa": "sage_cli.mtl.aggregators:DWA",
    "uw": "sage_cli.mtl.aggregators:UW",
    "famo": "sage_cli.mtl.aggregators:FAMO",
    "mgda": "sage_cli.mtl.aggregators:MGDA",
    "pcgrad": "sage_cli.mtl.aggregators:PCGrad",
    "imtlg": "sage_cli.mtl.aggregators:IMTLG",
    "cagrad": "sage_cli.mtl.aggregators:CAGrad",
    "fairgrad": "sage_cli.mtl.aggregators:FairGrad",
    "graddrop": "sage_cli.mtl.aggregators:GradDrop",
    "nashmtl": "sage_cli.mtl.aggregators:NashMTL",
    "moco": "sage_cli.mtl.aggregators:MoCo",
})
