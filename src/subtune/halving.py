"""Selection at a fraction of the cost: the budget of a greedy round, pure (no torch).

``selection.budget`` (default ``null``: exact selection, every candidate
trains the whole schedule) makes greedy selection cheaper in two ways that
can be combined:

- ``epochs: N``: candidates are scored after an N-epoch schedule instead of
  the selection's ``train.epochs`` (the cosine schedule is computed for N
  epochs, so this is a different, shorter training, not a prefix of the
  full one);
- ``kind: shortlist`` (with ``screen_epochs`` and ``keep``): every
  competing candidate first trains a short schedule that is complete in
  itself (``screen_epochs`` epochs, its cosine decay computed for that
  length, so a block that learns slowly is compared after its learning rate
  has annealed, not in the middle of a long schedule); the best ``keep`` of
  the round are then trained from the start with the full schedule (fresh
  runs, identical to exact selection's runs of the same sets), and the round
  decides among them on those full-schedule scores. The others keep their
  screening score, marked ``dropped_at: screen_epochs``, and are never
  chosen. The round's accepted gain and the stop rule therefore compare
  full-schedule scores only, as exact selection does; whenever the
  exact round's best candidate is on the shortlist, the round decides as the
  exact one does;
- ``kind: halving`` (with ``min_epochs`` and ``eta``): successive halving
  inside each round (Jamieson & Talwalkar 2016; the rung and keep rules of
  Hyperband, Li et al. 2018). Every candidate of the round trains
  ``min_epochs``; at each rung (epochs ``min_epochs * eta**i`` below the full
  schedule) the best ``max(1, floor(n / eta))`` of the ``n`` still training
  continue, the others stop. Survivors reach the full schedule and their
  full-schedule validation accuracy is their score. A survivor is never
  retrained: it continues its own run (same optimizer state, the learning-rate
  schedule computed for the full schedule, same batches), so its weights and
  score are those of an uninterrupted run. Halving is early stopping of the
  losers. A dropped candidate keeps its last rung's score, marked with the
  rung (``dropped_at``), and is never chosen (:func:`subtune.select.decide`
  skips it): a rung score after fewer epochs is not comparable with a
  full-schedule score, so it must not be able to beat a survivor.

Ties at a rung go to the earlier candidate in the round's list, which is
network order of the block a candidate adds or removes (the order
:func:`subtune.select.decide` breaks ties in). The round's reference set
(the linear probe of forward round 1, the full set of backward round 1:
the set whose score the gains are measured against) does not compete and
trains the full schedule.

Departure: the SubTuning authors' code has no budget; it trains every
candidate fully (exact selection, the default here).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from . import SubtuneError, dataclass_from_dict
from .select import TOL


KINDS = ("none", "halving", "shortlist")


@dataclass
class Budget:
    kind: str = "none"  # none | halving | shortlist
    min_epochs: int | None = None
    eta: int | None = None
    screen_epochs: int | None = None  # shortlist: the screening schedule's epochs (complete in itself)
    keep: int | None = None  # shortlist: how many candidates a round trains with the full schedule
    epochs: int | None = None  # scoring epochs (None: the selection's train.epochs)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "selection.budget") -> "Budget | None":
        if d is None:
            return None
        if not isinstance(d, dict):
            raise SubtuneError(f"{where} must be a mapping or null, not {d!r}")
        b = dataclass_from_dict(cls, d, where)
        if b.kind not in KINDS:
            raise SubtuneError(f"{where}.kind must be one of {', '.join(KINDS)}, not {b.kind!r}")
        if b.kind != "shortlist" and (b.screen_epochs is not None or b.keep is not None):
            raise SubtuneError(f"{where}: screen_epochs and keep need kind: shortlist")
        if b.kind == "shortlist":
            b.screen_epochs = 1 if b.screen_epochs is None else b.screen_epochs
            b.keep = 2 if b.keep is None else b.keep
            for name in ("screen_epochs", "keep"):
                v = getattr(b, name)
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise SubtuneError(f"{where}.{name} must be an integer of at least 1, not {v!r}")
        if b.kind == "halving":
            b.min_epochs = 1 if b.min_epochs is None else b.min_epochs
            b.eta = 2 if b.eta is None else b.eta
            if not isinstance(b.min_epochs, int) or b.min_epochs < 1:
                raise SubtuneError(f"{where}.min_epochs must be an integer of at least 1")
            if not isinstance(b.eta, int) or b.eta < 2:
                raise SubtuneError(f"{where}.eta must be an integer of at least 2")
        elif b.min_epochs is not None or b.eta is not None:
            raise SubtuneError(f"{where}: min_epochs and eta need kind: halving")
        if b.epochs is not None and (not isinstance(b.epochs, int) or b.epochs < 1):
            raise SubtuneError(f"{where}.epochs must be an integer of at least 1")
        return b

    def check(self, full_epochs: int, where: str = "selection.budget") -> None:
        """Checks against the selection's training epochs (``full_epochs``)."""
        if self.epochs is not None and self.epochs > full_epochs:
            raise SubtuneError(f"{where}.epochs ({self.epochs}) exceeds the selection's train.epochs ({full_epochs})")
        e = self.epochs or full_epochs
        if self.kind == "halving" and self.min_epochs >= e:
            raise SubtuneError(f"{where}.min_epochs ({self.min_epochs}) must be below the scoring epochs ({e})")
        if self.kind == "shortlist" and self.screen_epochs >= e:
            raise SubtuneError(f"{where}.screen_epochs ({self.screen_epochs}) must be below the scoring epochs ({e})")

    @property
    def one_job(self) -> bool:
        """Whether a round's competing candidates must be scored in one job (they are ranked against each other)."""
        return self.kind in ("halving", "shortlist")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rungs(epochs: int, min_epochs: int, eta: int) -> list[int]:
    """Epoch counts at which candidates are compared: min_epochs * eta**i below ``epochs``, then ``epochs``."""
    if min_epochs < 1 or eta < 2 or epochs < 1:
        raise SubtuneError(f"bad halving: epochs {epochs}, min_epochs {min_epochs}, eta {eta}")
    out, e = [], min_epochs
    while e < epochs:
        out.append(e)
        e *= eta
    return out + [epochs]


def keep_count(n: int, eta: int) -> int:
    """How many of ``n`` candidates continue past a rung: the best 1/eta, at least one."""
    return max(1, n // eta)


def survivors(scores: Sequence[float], keep: int) -> list[int]:
    """Positions of the ``keep`` best scores, in their original order; ties go to the earlier position."""
    # scores are ranked in units of select.TOL (far below one image), so float noise in the last bits of two
    # equal counts does not reorder them; ties keep the earlier position
    best = sorted(range(len(scores)), key=lambda i: (-round(scores[i] / TOL), i))[:keep]
    return sorted(best)


class Halving:
    """Successive halving over ``n`` candidates trained in lockstep, one epoch at a time.

    ``after_epoch(epoch, scores)`` takes the validation scores of the
    candidates still training (position -> score) after ``epoch`` epochs and
    returns the positions to stop now. ``dropped`` maps each stopped
    position to the epoch (rung) it stopped at.
    """

    def __init__(self, n: int, epochs: int, min_epochs: int, eta: int):
        self.n, self.epochs, self.eta = n, epochs, eta
        self.rungs = rungs(epochs, min_epochs, eta)
        self.active = list(range(n))
        self.dropped: dict[int, int] = {}

    def after_epoch(self, epoch: int, scores: dict[int, float]) -> list[int]:
        if epoch not in self.rungs or epoch >= self.epochs:
            return []
        missing = [i for i in self.active if i not in scores]
        if missing:
            raise SubtuneError(f"halving: no score after epoch {epoch} for candidate(s) {missing}")
        ranked = survivors([scores[i] for i in self.active], keep_count(len(self.active), self.eta))
        keep = {self.active[j] for j in ranked}
        stop = [i for i in self.active if i not in keep]
        for i in stop:
            self.dropped[i] = epoch
        self.active = [i for i in self.active if i in keep]
        return stop


def simulate(n: int, epochs: int, min_epochs: int, eta: int,
             score: Callable[[int, int], float]) -> dict[str, Any]:
    """Successive halving with a scorer ``score(candidate, epoch)`` (no training: tests and cost arithmetic).

    Returns ``scores`` (position -> the score it ended with), ``epochs``
    (position -> epochs trained), ``dropped`` (position -> rung) and
    ``candidate_epochs`` (the total trained).
    """
    h = Halving(n, epochs, min_epochs, eta)
    last: dict[int, float] = {}
    trained = {i: 0 for i in range(n)}
    for e in range(1, epochs + 1):
        if not h.active:
            break
        cur = {i: score(i, e) for i in h.active}
        for i in h.active:
            trained[i] = e
        last.update(cur)
        h.after_epoch(e, cur)
    return {"scores": last, "epochs": trained, "dropped": dict(h.dropped),
            "candidate_epochs": sum(trained.values())}
