"""Judging a training run: held-out validation, the best model and the health watch.

The trainer's loop asks a :class:`RunJudge` after every step what it makes of the run
(:meth:`RunJudge.judge`); the judge owns the validation set, the record of the last and
best validation values, the decision to write the best model, and the
:class:`~napari_cyclestyle.health.HealthWatch`. What is measured is
:func:`napari_cyclestyle.validation.measure`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Config
from .data import Domain
from .health import HealthWarning, HealthWatch
from .intensity import IntensityNorm
from .model_file import save_model
from .validation import HIGHER_IS_BETTER, ValidationSet, measure, resolve_metric, score

if TYPE_CHECKING:
    from .cyclegan import CycleGAN
    from .model import CycleStyleModel

__all__ = ["HeldOut", "RunJudge", "Verdict", "hold_out"]


@dataclass(frozen=True)
class HeldOut:
    """The images kept out of training to validate on (each may be None).

    Attributes
    ----------
    domain_a, domain_b : Domain or None
        The held-out images of each domain.
    truth_b : Domain or None
        The true B image of each ``domain_a`` image (paired validation data).
    """

    domain_a: Domain | None = None
    domain_b: Domain | None = None
    truth_b: Domain | None = None


@dataclass(frozen=True)
class Verdict:
    """What the judge made of one step.

    Attributes
    ----------
    validation : dict or None
        The validation values on held-out data, when measured at this step.
    best_model_path : Path or None
        The best model file, when this step's validation made it the best so far.
    warnings : list of HealthWarning
        The health watch's warnings new at this step.
    """

    validation: dict[str, float] | None
    best_model_path: Path | None
    warnings: list[HealthWarning]


def hold_out(
    domain_a: Domain,
    domain_b: Domain,
    given: tuple,
    channel_axes: tuple[int | None, int | None],
    fraction: float,
) -> tuple[Domain, Domain, HeldOut]:
    """The training domains and the held-out images.

    Parameters
    ----------
    domain_a, domain_b : Domain
        The training domains.
    given : tuple
        The validation images of A and B and the paired truth of A (each may be None;
        a :class:`Domain`, array, path or sequence otherwise).
    channel_axes : tuple of int or None
        The channel axes of A's and B's images.
    fraction : float
        The share of its images a domain without given validation images keeps out.

    Returns
    -------
    tuple
        The training domains (without what was kept out) and the :class:`HeldOut`.

    Raises
    ------
    ValueError
        If only one domain has validation images, or the truth comes without A's.
    """
    training = [domain_a, domain_b]
    held: list[Domain | None] = []
    for slot, name in enumerate("AB"):
        domain = training[slot]
        if given[slot] is not None:
            held.append(_as_domain(given[slot], name, channel_axes[slot], domain.norm))
        elif fraction > 0:
            training[slot], kept_out = domain.split(fraction)
            held.append(kept_out)
        else:
            held.append(None)
    if (held[0] is None) != (held[1] is None):
        missing = "B" if held[1] is None else "A"
        raise ValueError(
            f"Validation needs held-out images of both domains: give domain {missing}'s "
            "too, or set validation_fraction to keep a fraction of each out."
        )
    truth = given[2]
    if truth is not None and given[0] is None:
        raise ValueError(
            "validation_truth_b is the true B of each validation_a image: give validation_a too."
        )
    if truth is not None:
        truth = _as_domain(truth, "B", channel_axes[1], training[1].norm)
    return training[0], training[1], HeldOut(held[0], held[1], truth)


def _as_domain(images, name: str, channel_axis: int | None, norm: IntensityNorm) -> Domain:
    """Validation images as a domain normalised like the training domain's."""
    return images if isinstance(images, Domain) else Domain(images, name, channel_axis, norm)


class RunJudge:
    """Validation, the best model and the health watch of one training run.

    Parameters
    ----------
    config : Config
        The run's settings (``validation_*``, ``best_metric``, ``keep_best``,
        ``health_watch``).
    held_out : HeldOut
        The images kept out of training.
    best_path : Path
        Where the best model goes.

    Attributes
    ----------
    best_metric : str
        The metric the best model is chosen by (what ``"auto"`` picked).
    record : dict
        Provenance of validation: ``{"last": {...}, "best": {...}}`` (each with its step).
    health : HealthWatch
        The health watch.
    validation_set : ValidationSet or None
        Set by :meth:`prepare`.

    Raises
    ------
    ValueError
        If ``best_metric`` needs paired data that is not there.
    """

    def __init__(self, config: Config, held_out: HeldOut, best_path: Path):
        self.config = config
        self.held_out = held_out
        self.best_path = best_path
        self.best_metric = resolve_metric(
            config.train.best_metric, held_out.truth_b is not None, config.train.one_sided
        )
        self.record: dict[str, dict[str, float]] = {}
        self.health = HealthWatch(config.train.total_steps)
        self.validation_set: ValidationSet | None = None
        self._is_main = True

    def prepare(self, domain_a: Domain, domain_b: Domain, is_main: bool) -> None:
        """Fix the validation patches: of the held-out images; without them, of the
        training images for the health watch alone; on helper ranks none (rank 0
        measures and watches)."""
        train = self.config.train
        held = self.held_out
        self._is_main = is_main
        if not is_main or (held.domain_a is None and not train.health_watch):
            return
        held_out = held.domain_a is not None
        domains = (held.domain_a, held.domain_b) if held_out else (domain_a, domain_b)
        self.validation_set = ValidationSet.build(
            *domains, train.validation_patches, train.crop_size, train.seed, held.truth_b, held_out
        )

    def judge(
        self,
        step: int,
        losses: dict[str, float] | None,
        last: bool,
        cyclegan: CycleGAN,
        model: Callable[[], CycleStyleModel],
    ) -> Verdict:
        """Measure (when due), keep the record, write the best model and watch health.

        Parameters
        ----------
        step : int
            Steps completed.
        losses : dict or None
            The step's losses, when read back.
        last : bool
            Whether this is the run's last step (validation is always due then).
        cyclegan : CycleGAN
            The networks to measure.
        model : callable
            Gives the model file's contents (called only to write the best model).
        """
        measures = self._maybe_measure(step, last, cyclegan)
        held_out = measures is not None and self.validation_set.held_out
        best_model_path = self._record(step, measures, model) if held_out else None
        watch = self.config.train.health_watch and self._is_main
        warnings = self.health.observe(step, losses, measures) if watch else []
        return Verdict(measures if held_out else None, best_model_path, warnings)

    def _maybe_measure(self, step: int, last: bool, cyclegan: CycleGAN) -> dict[str, float] | None:
        every = self.config.train.validation_every
        if self.validation_set is None or not (last or (every and step % every == 0)):
            return None
        n = cyclegan.networks  # a one-sided run has no F and no D_A: measure skips theirs
        return measure(  # the generators the model file holds (the averages with EMA)
            *cyclegan.shown_generators(),
            n.discriminator_a,
            n.discriminator_b,
            self.validation_set,
            self.config.train.gan_mode,
        )

    def _record(
        self, step: int, measures: dict[str, float], model: Callable[[], CycleStyleModel]
    ) -> Path | None:
        """Keep the last and the best validation values; write the best model when this
        is it (and ``keep_best``). Returns the best model's path when written."""
        entry = {"step": step, **measures}
        self.record["last"] = entry
        value = score(measures, self.best_metric)
        best = self.record.get("best")
        if not math.isfinite(value):
            return None
        if best is not None:
            higher = HIGHER_IS_BETTER[self.best_metric]
            if (value <= best["value"]) if higher else (value >= best["value"]):
                return None
        self.record["best"] = {"metric": self.best_metric, "value": value, **entry}
        if not self.config.train.keep_best:
            return None
        save_model(model(), self.best_path)
        return self.best_path
