"""The three transfer-learning strategies, which parameters each trains, and `auto`.

The backbone is seen as a list of blocks in execution order (`blocks`); a strategy trains the
last few of them (or none, or all) plus the head. Everything before the first trainable block
is frozen, kept in eval mode (BatchNorm statistics untouched) and can be run once and cached.

    feature-extraction   backbone frozen; only the head trains
    partial              the last N blocks train at lr * backbone_lr_mult, the head at lr
    full                 every block trains at lr * backbone_lr_mult, the head at lr
    auto                 `choose` below, from the dataset size and a linear probe
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from scripts.export.classifier import GapClassifier
from scripts.train.classification import FinetuneError

STRATEGIES = ("feature-extraction", "partial", "full")

# Blocks `partial` unfreezes by default: about the last stage of each network.
DEFAULT_UNFREEZE = {
    "mobilenet_v2": 3,  # features 16-18: the last 160-channel block, the 320 block, the 1x1 conv
    "resnet18": 2,  # layer4
    "resnet34": 3,  # layer4
    "resnet50": 3,  # layer4
    "vgg16": 1,  # block5 (three 3x3 convs)
    "vgg16_bn": 1,
}


def blocks(arch: str, features: nn.Module) -> list[nn.Module]:
    """The backbone as blocks whose composition in order is `features`:
    mobilenet_v2: its 19 `features` children (stem conv, 17 inverted residuals, 1x1 conv);
    resnet: the stem (conv1, bn1, relu, maxpool), then every residual block of layer1-4;
    vgg: the five conv stages, each ending with its max-pool."""
    children = list(features.children())
    if arch == "mobilenet_v2":
        return children
    if arch.startswith("resnet"):
        stem: list[nn.Module] = [nn.Sequential(*children[:4])]
        return stem + [b for layer in children[4:] for b in layer.children()]
    if arch.startswith("vgg"):
        stages: list[nn.Module] = []
        current: list[nn.Module] = []
        for m in children:
            current.append(m)
            if isinstance(m, nn.MaxPool2d):
                stages.append(nn.Sequential(*current))
                current = []
        return stages
    raise FinetuneError(f"no block layout for {arch!r}")


@dataclass
class Split:
    """frozen: blocks before the first trainable one (run under no_grad, eval mode).
    trainable: the remaining blocks followed by the head. first: index of the first
    trainable block (== number of blocks for feature extraction)."""

    frozen: nn.Sequential
    trainable: nn.Sequential
    first: int
    num_blocks: int

    @property
    def backbone_trains(self) -> bool:
        return self.first < self.num_blocks


def first_trainable(strategy: str, num_blocks: int, unfreeze: int) -> int:
    if strategy == "feature-extraction":
        return num_blocks
    if strategy == "full":
        return 0
    if strategy == "partial":
        if not 1 <= unfreeze <= num_blocks:
            raise FinetuneError(f"--unfreeze must be 1..{num_blocks}, got {unfreeze}")
        return num_blocks - unfreeze
    raise FinetuneError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")


def apply(model: GapClassifier, arch: str, strategy: str, unfreeze: int | None = None) -> Split:
    """Set requires_grad per `strategy` and return the frozen/trainable split."""
    bl = blocks(arch, model.features)
    n = DEFAULT_UNFREEZE.get(arch, 1) if unfreeze is None else unfreeze
    first = first_trainable(strategy, len(bl), n)
    for i, block in enumerate(bl):
        block.requires_grad_(i >= first)
    model.head.requires_grad_(True)
    return Split(nn.Sequential(*bl[:first]), nn.Sequential(*bl[first:], model.head), first, len(bl))


def set_train_mode(split: Split, training: bool) -> None:
    """Frozen blocks always stay in eval mode: their BatchNorm keeps ImageNet statistics."""
    split.trainable.train(training)
    split.frozen.eval()


def param_groups(
    model: GapClassifier, lr: float, backbone_lr_mult: float
) -> list[dict[str, object]]:
    """Head at lr; trainable backbone parameters at lr * backbone_lr_mult."""
    backbone = [p for p in model.features.parameters() if p.requires_grad]
    groups: list[dict[str, object]] = [{"params": list(model.head.parameters()), "lr": lr}]
    if backbone:
        groups.append({"params": backbone, "lr": lr * backbone_lr_mult})
    return groups


# `auto` rule. Size = training images in the smallest class. Similarity to ImageNet = the
# linear probe's skill: validation accuracy of a logistic regression on the frozen backbone's
# pooled features, rescaled so chance is 0 and perfect is 1: (acc - 1/K) / (1 - 1/K).
SMALL_PER_CLASS = 100
LARGE_PER_CLASS = 1000
SIMILAR_SKILL = 0.7
SEPARATED_SKILL = 0.95


@dataclass(frozen=True)
class Decision:
    strategy: str
    reason: str


def probe_skill(accuracy: float, num_classes: int) -> float:
    chance = 1.0 / num_classes
    return (accuracy - chance) / (1.0 - chance)


def choose(per_class: int, probe_accuracy: float, num_classes: int) -> Decision:
    """The documented rule:

    probe skill >= 0.95                      -> feature-extraction (any size)
    < 100 images/class:   skill >= 0.7       -> feature-extraction, else partial
    100-999 images/class: skill >= 0.7       -> partial, else full
    >= 1000 images/class                     -> full
    """
    skill = probe_skill(probe_accuracy, num_classes)
    facts = (
        f"linear probe on frozen features: {probe_accuracy:.1%} val accuracy (skill {skill:.2f}; "
        f"similar to ImageNet at >= {SIMILAR_SKILL}); smallest class: {per_class} train images"
    )
    similar = skill >= SIMILAR_SKILL
    if skill >= SEPARATED_SKILL:
        return Decision(
            "feature-extraction",
            f"{facts}. The frozen features already separate the classes, so training "
            "backbone layers would only cost time and risk overfitting.",
        )
    if per_class < SMALL_PER_CLASS:
        if similar:
            return Decision(
                "feature-extraction",
                f"{facts}. Few images and ImageNet-like features: train the head only; "
                "more trainable layers would overfit.",
            )
        return Decision(
            "partial",
            f"{facts}. Few images but the features fit poorly: adapt the last blocks at a low "
            "learning rate, keep the rest frozen against overfitting.",
        )
    if per_class < LARGE_PER_CLASS:
        if similar:
            return Decision(
                "partial",
                f"{facts}. A medium-sized, ImageNet-like dataset: fine-tune the last blocks.",
            )
        return Decision(
            "full",
            f"{facts}. Enough images and the features fit poorly: fine-tune every layer at a "
            "small learning rate.",
        )
    return Decision(
        "full",
        f"{facts}. A large dataset supports fine-tuning every layer at a small learning rate.",
    )
