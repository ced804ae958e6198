"""The shape every recipe section shares, and the rule for a run's identity.

A *choice* is a part of a recipe picked by name from a registry (an optimizer method, an objective, an MTL
aggregator): its class declares its own settings, with their defaults, and nothing else, so a setting given
for a method that does not read it is an unknown key of that method. Torch-free: recipes are checked without
importing it; a choice's ``build`` imports its implementation on first use.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

KINDS = ("dg", "mtl")  # domain generalization; multi-task learning


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def non_defaults(model: BaseModel, exclude=()) -> dict[str, Any]:
    """The fields whose value differs from the field's default (nested sections likewise).

    This is what a run's identity hashes: a new setting whose default keeps today's behaviour does not change
    the identity of any existing recipe, and writing a default out changes nothing either.
    """
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        if name in exclude:
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            nested = value.identity() if hasattr(value, "identity") else non_defaults(value)
            if nested:
                out[field.alias or name] = nested
            continue
        default = field.get_default(call_default_factory=True)
        if value != default:
            out[field.alias or name] = value
    return out


class Choice(Section):
    """A registry entry's settings. Subclasses set ``fits`` (which kinds of dataset it serves) and the
    discriminating field (``method`` or ``name``) as a ``Literal`` of their registry name."""

    fits: ClassVar[tuple[str, ...]] = KINDS
    tag: ClassVar[str] = "name"  # the field that names the choice

    @model_validator(mode="before")
    @classmethod
    def _none_means_default(cls, data):
        # ``--set optimizer.rho=null`` asks for the method's own default
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @property
    def choice(self) -> str:
        return getattr(self, self.tag)

    def misfit(self, kind: str) -> tuple[str, Any, str] | None:
        """(key, value, why) of a setting that cannot act here (on a ``kind`` dataset, or with the other
        settings given), or None. A setting left at its default never misfits."""
        return None

    def idle(self) -> set[str]:
        """Settings that do not act given the others (SGD's momentum under Adam): left out of the identity,
        of the params logged with a run, and shown apart by ``sage validate``."""
        return set()

    def identity(self) -> dict[str, Any]:
        """The choice's name and those of its acting settings that differ from their defaults."""
        return {self.tag: self.choice, **non_defaults(self, exclude=(self.tag, *self.idle()))}
