"""Linear programs through HiGHS (highspy): a model passed once and re-solved with new bounds, or solved once.

The MPC solves the same structure every quarter hour with new right-hand sides; passing the model once and
changing only the bounds lets HiGHS start from the last solution, which is what makes a year of quarter hours
take minutes rather than hours. Rows are ``row_lower <= A x <= row_upper`` (equal bounds for an equality).
"""

from __future__ import annotations

import os
import sys

import highspy
import numpy as np
import numpy.typing as npt
from scipy.sparse import csc_matrix  # type: ignore[import-untyped]

__all__ = ["INF", "LinearProgram", "LpError", "solve_once"]

Array = npt.NDArray[np.float64]
INF = highspy.kHighsInf


class LpError(RuntimeError):
    """HiGHS did not find an optimum; the message says what it found instead."""


def _quiet() -> highspy.Highs:
    # HiGHS prints its banner on standard output, from C++, when the first instance is made: keep it off the
    # output of `energyhub simulate` (which may be piped as JSON) by pointing fd 1 elsewhere meanwhile.
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 1)
            highs = highspy.Highs()  # type: ignore[no-untyped-call]
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    highs.silent()  # no log either: a year of quarter hours would print a million lines
    return highs


_SHARED: highspy.Highs | None = None


def solve_once(
    cost: Array, matrix: csc_matrix, row_lower: Array, row_upper: Array, col_lower: Array, col_upper: Array
) -> Array:
    """Solve one model on a Highs instance kept for the purpose (creating one per quarter hour costs more)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = _quiet()
    return LinearProgram(cost, matrix, row_lower, row_upper, col_lower, col_upper, highs=_SHARED).solve()


def _finite(values: Array) -> Array:
    out = np.asarray(values, dtype=float).copy()
    out[np.isposinf(out)] = INF
    out[np.isneginf(out)] = -INF
    return out


class LinearProgram:
    """min cost.x subject to row and column bounds; ``solve`` may change bounds between solves."""

    def __init__(
        self,
        cost: Array,
        matrix: csc_matrix,
        row_lower: Array,
        row_upper: Array,
        col_lower: Array,
        col_upper: Array,
        *,
        highs: highspy.Highs | None = None,
        integer: npt.NDArray[np.bool_] | None = None,
        time_limit_s: float | None = None,
        mip_rel_gap: float = 1e-6,
    ) -> None:
        self._highs = highs if highs is not None else _quiet()
        lp = highspy.HighsLp()
        a = csc_matrix(matrix)
        lp.num_col_, lp.num_row_ = a.shape[1], a.shape[0]
        lp.col_cost_ = np.asarray(cost, dtype=float)
        lp.col_lower_, lp.col_upper_ = _finite(col_lower), _finite(col_upper)
        lp.row_lower_, lp.row_upper_ = _finite(row_lower), _finite(row_upper)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = a.indptr.astype(np.int32)
        lp.a_matrix_.index_ = a.indices.astype(np.int32)
        lp.a_matrix_.value_ = a.data.astype(float)
        self._mip = integer is not None and bool(integer.any())
        if integer is not None and self._mip:
            lp.integrality_ = [
                highspy.HighsVarType.kInteger if flag else highspy.HighsVarType.kContinuous
                for flag in integer
            ]
            self._highs.setOptionValue("mip_rel_gap", mip_rel_gap)
        if time_limit_s is not None:
            self._highs.setOptionValue("time_limit", float(time_limit_s))
        self._highs.passModel(lp)
        self.num_row, self.num_col = a.shape
        self._row_lower, self._row_upper = _finite(row_lower), _finite(row_upper)
        self._col_lower, self._col_upper = _finite(col_lower), _finite(col_upper)

    def solve(
        self,
        *,
        row_lower: Array | None = None,
        row_upper: Array | None = None,
        col_upper: Array | None = None,
        cols: npt.NDArray[np.int32] | None = None,
    ) -> Array:
        """``col_upper`` holds new upper bounds of every column, or with ``cols`` of those columns only (lower
        bounds stay as built)."""
        # Only bounds that differ from the last solve are passed: a plan's next quarter hour changes few.
        if row_lower is not None or row_upper is not None:
            lower = _finite(row_lower) if row_lower is not None else np.full(self.num_row, -INF)
            upper = _finite(row_upper) if row_upper is not None else np.full(self.num_row, INF)
            changed = np.flatnonzero((lower != self._row_lower) | (upper != self._row_upper)).astype(np.int32)
            if len(changed):
                self._highs.changeRowsBounds(len(changed), changed, lower[changed], upper[changed])  # type: ignore[attr-defined]
                self._row_lower[changed], self._row_upper[changed] = lower[changed], upper[changed]
        if col_upper is not None:
            index = cols if cols is not None else np.arange(self.num_col, dtype=np.int32)
            values = _finite(col_upper)
            moved = values != self._col_upper[index]
            if moved.any():
                index, values = index[moved], values[moved]
                self._highs.changeColsBounds(len(index), index, self._col_lower[index], values)
                self._col_upper[index] = values
        self._highs.run()
        status = self._highs.getModelStatus()
        # A MIP stopped by its time limit with a solution in hand is still an answer: ``gap`` says how good.
        timed_out = (
            status == highspy.HighsModelStatus.kTimeLimit and self._highs.getInfo().primal_solution_status
        )
        if status != highspy.HighsModelStatus.kOptimal and not timed_out:
            raise LpError(f"HiGHS: {self._highs.modelStatusToString(status)}")
        return np.array(self._highs.getSolution().col_value)

    @property
    def objective(self) -> float:
        return float(self._highs.getInfo().objective_function_value)

    @property
    def bound(self) -> float:
        """The best proven lower bound of the objective: the objective itself for an LP solved to optimality."""
        info = self._highs.getInfo()
        return float(info.mip_dual_bound if self._mip else info.objective_function_value)
