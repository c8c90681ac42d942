"""The health watch: signs that a CycleGAN training is failing, each told once with advice.

:class:`HealthWatch` reads what the trainer measures (the losses, and the
:func:`napari_cyclestyle.validation.measure` results on fixed patches) and returns a
:class:`HealthWarning` the first time each kind of failure shows:

- ``discriminator_wins``: a discriminator's loss stays near 0 while its generator's
  adversarial loss does not fall: the generator gets no useful gradient;
- ``mode_collapse``: a generator's outputs vary far less from patch to patch than the
  target domain's real images;
- ``content_inversion``: a generator's output is the negative of its input's structure
  (bright becomes dark);
- ``cycle_spikes``: the cycle loss spikes again and again, each spike higher.

In a one-sided run (``mode`` cut or fastcut: no F, D_A or cycle) the checks of what it
lacks find nothing to read and stay silent. A loss that becomes NaN or Inf stops
training (``TrainingDiverged``), as before.
Torch-free: it only sees numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

HEALTH_KINDS = ("discriminator_wins", "mode_collapse", "content_inversion", "cycle_spikes")

# A discriminator "wins outright" below this loss (healthy LSGAN/vanilla losses are
# around 0.2 to 0.7), over at least this many steps and readings.
_WINNING_LOSS = 0.02
_WINNING_STEPS, _WINNING_READINGS = 50, 5
# Mode collapse: outputs vary less than this fraction of the real images' variety.
_COLLAPSED_DIVERSITY = 0.1
# Content inversion: luminance correlation of input and output below this.
_INVERTED_STRUCTURE = -0.3
# Measurements in a row that must agree before a warning (one can be a fluke).
_CONFIRMATIONS = 2
# Measurements in the first part of the run are ignored: untrained networks are odd.
_WARM_UP_FRACTION = 0.1
# A cycle-loss spike is this many times the running level; this many spikes in a row,
# each this much higher than the one before, are a warning.
_SPIKE_FACTOR, _SPIKES_IN_A_ROW, _SPIKE_GROWTH = 3.0, 4, 1.25
_LEVEL_SMOOTHING = 0.1

# The checks on measurements: kind, the measure (per output domain), the bound below
# which it fails; what the warning says, and what to try.
_TRANSLATION_CHECKS = (
    ("mode_collapse", "diversity", _COLLAPSED_DIVERSITY),
    ("content_inversion", "structure", _INVERTED_STRUCTURE),
)
_TRANSLATION_PROBLEMS = {
    "mode_collapse": "Mode collapse: {generator}'s outputs vary {value:.0%} as much as the "
    "real images of domain {domain} do; it makes nearly the same image whatever the input.",
    "content_inversion": "Content inversion: {generator}'s output is anti-correlated with "
    "its input (correlation {value:.2f}): what is bright in domain {source} comes out dark.",
}
_TRANSLATION_ADVICE = {
    "mode_collapse": "a lower learning rate, more cycle or identity weight "
    "(lambda_cycle_*, lambda_identity), a larger history pool (pool_size), or more varied "
    "data or augmentation.",
    "content_inversion": "more identity weight (lambda_identity) or cycle weight, a lower "
    "learning rate, or a new seed; ignore this if the two domains really are each other's "
    "negative.",
}

_PAIRS = {"D_B": ("G_adversarial", "G", "B"), "D_A": ("F_adversarial", "F", "A")}


@dataclass(frozen=True)
class HealthWarning:
    """One sign of a failing training.

    Attributes
    ----------
    kind : str
        One of :data:`HEALTH_KINDS`.
    step : int
        The step at which it showed.
    problem : str
        What is wrong, in a sentence.
    advice : str
        What to try.
    """

    kind: str
    step: int
    problem: str
    advice: str

    def __str__(self) -> str:
        return f"Step {self.step}: {self.problem} Try: {self.advice}"


@dataclass
class HealthWatch:
    """Watch one run's measurements; each kind of warning is given once.

    Parameters
    ----------
    total_steps : int
        Steps of the whole run (the first tenth is not judged on measurements).
    """

    total_steps: int
    given: set[str] = field(default_factory=set)
    _streaks: dict[str, tuple] = field(default_factory=dict)
    _confirmed: dict[str, int] = field(default_factory=dict)
    _level: float | None = None
    _in_spike: bool = False
    _spikes: list[float] = field(default_factory=list)

    def observe(
        self,
        step: int,
        losses: dict[str, float] | None = None,
        measures: dict[str, float] | None = None,
    ) -> list[HealthWarning]:
        """Take a step's losses and/or measurements; return the warnings new at it."""
        found: list[HealthWarning] = []
        if losses:
            found += self._discriminators(step, losses)
            found += self._cycle_spikes(step, losses)
        if measures and step >= _WARM_UP_FRACTION * self.total_steps:
            found += self._translations(step, measures)
        fresh = [warning for warning in found if warning.kind not in self.given]
        self.given.update(warning.kind for warning in fresh)
        return list({warning.kind: warning for warning in fresh}.values())

    # ------------------------------------------------------------------ checks
    def _discriminators(self, step: int, losses: dict[str, float]) -> list[HealthWarning]:
        found = []
        for name, (adversarial, generator, domain) in _PAIRS.items():
            if name not in losses or adversarial not in losses:
                continue
            # The streak of readings with this discriminator near 0: (first, last, count).
            reading = (step, losses[name], losses[adversarial])
            if reading[1] >= _WINNING_LOSS:
                self._streaks.pop(name, None)
                continue
            first, _, count = self._streaks.get(name, (reading, reading, 0))
            self._streaks[name] = (first, reading, count + 1)
            winning = (
                count + 1 >= _WINNING_READINGS
                and step - first[0] >= _WINNING_STEPS
                and reading[2] >= first[2]
            )
            if winning:
                found.append(
                    HealthWarning(
                        "discriminator_wins",
                        step,
                        f"{name} wins outright: its loss has stayed near 0 for "
                        f"{step - first[0]} steps while {generator}'s adversarial loss "
                        f"does not fall, so {generator} learns little about domain {domain}.",
                        "a lower learning rate, a smaller or spectral-norm discriminator "
                        "(ndf, n_layers_discriminator), a larger history pool, or more "
                        "data or augmentation (flip).",
                    )
                )
        return found

    def _cycle_spikes(self, step: int, losses: dict[str, float]) -> list[HealthWarning]:
        if "cycle_A" not in losses or "cycle_B" not in losses:
            return []
        value = losses["cycle_A"] + losses["cycle_B"]
        if self._level is None:
            self._level = value
            return []
        spiking = value > _SPIKE_FACTOR * self._level
        if spiking and self._in_spike:
            self._spikes[-1] = max(self._spikes[-1], value)
        elif spiking:
            if self._spikes and value < _SPIKE_GROWTH * self._spikes[-1]:
                self._spikes.clear()  # not higher than the last: the series starts again
            self._spikes.append(value)
        else:
            self._level += _LEVEL_SMOOTHING * (value - self._level)
        self._in_spike = spiking
        if len(self._spikes) < _SPIKES_IN_A_ROW:
            return []
        return [
            HealthWarning(
                "cycle_spikes",
                step,
                f"The cycle loss keeps spiking, each time higher ({len(self._spikes)} "
                f"spikes, up to {max(self._spikes):.3g} against a usual "
                f"{self._level:.3g}): training is becoming unstable.",
                "a lower learning rate, a shorter run at full rate before the decay "
                "(n_steps), or a larger batch_size.",
            )
        ]

    def _translations(self, step: int, measures: dict[str, float]) -> list[HealthWarning]:
        found = []
        for generator, domain, source in (("G", "B", "A"), ("F", "A", "B")):
            for kind, measure, bound in _TRANSLATION_CHECKS:
                value = measures.get(f"{measure}_{domain}")
                if self._confirm(f"{kind}_{domain}", value, bound):
                    problem = _TRANSLATION_PROBLEMS[kind].format(
                        generator=generator, domain=domain, source=source, value=value
                    )
                    found.append(HealthWarning(kind, step, problem, _TRANSLATION_ADVICE[kind]))
        return found

    def _confirm(self, key: str, value: float | None, bound: float) -> bool:
        """Whether ``value`` has been below ``bound`` for enough measurements in a row."""
        if value is None:
            return False
        self._confirmed[key] = self._confirmed.get(key, 0) + 1 if value < bound else 0
        return self._confirmed[key] >= _CONFIRMATIONS
