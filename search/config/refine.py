"""The ``refine:`` section of a space: gradient refinement of the best black-box trial's coefficients.

```yaml
refine: {from: best, loss: loglik, steps: 40, lr: 0.05, documents: 64, patience: 3}
```

After the search reaches its budget (and before selection), the best trial of a method linear in its task vectors
has its ``weight`` / ``lambda`` coefficients optimised by gradient descent, at the space's granularity, on the
search documents; the result is recorded as a trial of its own (see :mod:`search.refine`). ``search refine
RUN_DIR`` does the same on a finished or stopped run, with these settings or the defaults.

>>> Refine.model_validate({"loss": "entropy", "steps": 10}).steps
10
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Refine(BaseModel):
    """Settings of the gradient refinement (every field has a default: ``refine: {}`` refines the best trial)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: Union[Literal["best"], int] = Field(
        "best", alias="from",
        description="best (the best finished trial of a method linear in its task vectors, on the search score) "
                    "or a trial number.")
    loss: Literal["loglik", "entropy"] = Field(
        "loglik", description="loglik: negative log-likelihood of the answers of the search documents; entropy: "
                              "entropy of the next-token prediction after each prompt, answers unused (AdaMerging).")
    steps: int = Field(40, ge=1, le=100_000, description="Most gradient steps.")
    lr: float = Field(0.05, gt=0, description="Adam's learning rate, in coefficient units.")
    documents: int = Field(64, ge=1, description="Search documents per step (the same ones every step), and at "
                                                 "most as many select documents for early stopping.")
    batch_size: int = Field(16, ge=1, description="Documents per forward pass (memory only: the loss and "
                                                  "gradient are the same).")
    check_every: int = Field(5, ge=1, description="Steps between two checks of the loss on the select documents.")
    patience: int = Field(3, ge=1, description="Stop when the select loss has not improved for this many checks; "
                                               "the best checked coefficients are kept.")
    bounds: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="Narrower bounds per parameter (weight, lambda) than the space's ranges; every value is "
                    "clipped to them after each step. Default: the space's ranges.")

    @field_validator("bounds")
    @classmethod
    def _ordered(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (low, high) in value.items():
            if low > high:
                raise ValueError(f"bounds.{name}: [{low}, {high}] is reversed")
        return value

    def described(self) -> dict[str, object]:
        """The settings as a plain mapping (``from`` under its YAML name), for the trial's attributes."""
        return self.model_dump(mode="json", by_alias=True)
