"""``torch_npu.testing.testcase``: ``TestCase`` with torch_npu's assertion helpers, ``run_tests``.

Tolerance rules (torch_npu's, kept so op tests pass or fail as they do on Ascend):

* :meth:`TestCase.assertRtolEqual` ``(x, y, prec=1e-4, prec16=1e-3)``: shapes and dtypes must match
  (after ``auto_trans_dtype`` casts x to y's dtype); bool must be equal; otherwise, with
  ``err = |x - y|`` and the tolerance ``p`` (``prec16`` for float16, else ``prec``), an element
  passes absolutely when ``err <= p`` and relatively when ``err / (max(|x|, |y|) + m) <= p``
  (``m`` = 6e-8 for float16, 1e-9 otherwise). The comparison fails only when more than
  ``p * numel`` elements fail absolutely *and* more than ``p * numel`` fail relatively. Accepts
  tensors (any device; bfloat16 is not comparable, convert to float32 first, as on Ascend), numpy
  arrays, numbers and (nested) sequences. Differences are computed in float64, so integer
  inputs cannot wrap around and float16 ones cannot overflow.
* :meth:`TestCase.assertEqual` ``(x, y, prec=None, message='')``: numbers within ``prec``
  (default :attr:`TestCase.precision`, 1e-5), tensors of equal size with max ``|x - y| <= prec``
  and NaNs in the same places (dtypes compared only with ``exact_dtype``), sequences and dicts
  element-wise, anything else with ``==``. A string ``prec`` is taken as the message.
* :meth:`TestCase.assertTensorsSlowEqual`: same size and dtype, max element difference ``<= prec``.

Each test starts with torch, ``random`` and numpy seeded from ``$SEED`` (default 666).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import sys
import unittest
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from numbers import Number

import numpy as np
import torch

from .common_utils import is_iterable, iter_indices, set_npu_device

__all__ = ["TestCase", "run_tests"]

_RTOL_DTYPES = (
    np.bool_,
    np.uint8,
    np.int8,
    np.uint16,
    np.int16,
    np.int32,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
)
_MIN_DENOMINATOR = {np.dtype(np.float16): 6e-8}
_MIN_DENOMINATOR_DEFAULT = 1e-9


def run_tests() -> None:
    """Runs the calling module's tests with unittest (``python FILE`` / ``npuquant run FILE``)."""
    unittest.main(argv=sys.argv)


def _is_sequence(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


class TestCase(unittest.TestCase):
    """unittest.TestCase with torch_npu's assertion helpers (see the module docstring)."""

    _precision = 1e-5
    maxDiff = None
    exact_dtype = False

    @property
    def precision(self) -> float:
        """Default tolerance of :meth:`assertEqual`."""
        return self._precision

    @precision.setter
    def precision(self, prec: float) -> None:
        self._precision = prec

    @classmethod
    def setUpClass(cls) -> None:
        cls.npu_device = set_npu_device()

    def setUp(self) -> None:
        seed = int(os.getenv("SEED", "666"))
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)

    # ---------------------------------------------------------------------- assertRtolEqual

    def assertRtolEqual(  # noqa: N802 - torch_npu's name
        self,
        x: object,
        y: object,
        prec: float = 1.0e-4,
        prec16: float = 1.0e-3,
        auto_trans_dtype: bool = False,
        message: str | None = None,
    ) -> None:
        """Relative-or-absolute comparison with an allowance of ``prec * numel`` bad elements."""
        if _is_sequence(x) and _is_sequence(y):
            if len(x) != len(y):
                self.fail(self._message(f"length error: {len(x)} != {len(y)}", message))
            for x_item, y_item in zip(x, y):
                self.assertRtolEqual(x_item, y_item, prec, prec16, auto_trans_dtype, message)
            return
        if isinstance(x, torch.Tensor) and _is_sequence(y):
            y = torch.as_tensor(y, dtype=x.dtype, device=x.device)
        elif _is_sequence(x) and isinstance(y, torch.Tensor):
            x = torch.as_tensor(x, dtype=y.dtype, device=y.device)
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if auto_trans_dtype:
                x = x.to(y.dtype)
            x, y = self._to_numpy(x, message), self._to_numpy(y, message)
        elif isinstance(x, Number) and isinstance(y, Number):
            x, y = np.array(x), np.array(y)
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            self.fail(
                self._message(
                    f"required tensors, numpy arrays, numbers or sequences of them, got "
                    f"{type(x).__name__} and {type(y).__name__}",
                    message,
                )
            )
        if x.shape != y.shape:
            self.fail(self._message(f"shape error: {x.shape} != {y.shape}", message))
        if x.dtype != y.dtype:
            self.fail(self._message(f"dtype error: {x.dtype} != {y.dtype}", message))
        if x.dtype.type not in _RTOL_DTYPES:
            self.fail(self._message(f"required dtype in {[d.__name__ for d in _RTOL_DTYPES]}, got {x.dtype}", message))
        if x.dtype == np.bool_:
            if not np.array_equal(x, y):
                self.fail(self._message(f"result error: {int(np.sum(x != y))} bool elements differ", message))
            return
        tolerance = prec16 if x.dtype == np.float16 else prec
        minimum = _MIN_DENOMINATOR.get(x.dtype, _MIN_DENOMINATOR_DEFAULT)
        a, b = x.astype(np.float64), y.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.abs(b - a)
            rel = err / (np.maximum(np.abs(a), np.abs(b)) + minimum)
            abs_bad = int(np.sum(~(err <= tolerance)))
            rel_bad = int(np.sum(~(rel <= tolerance)))
        allowed = x.size * tolerance
        if abs_bad > allowed and rel_bad > allowed:
            finite = np.isfinite(err)
            worst = float(err[finite].max()) if finite.any() else math.nan
            self.fail(
                self._message(
                    f"result error: {abs_bad} of {x.size} elements exceed the absolute tolerance {tolerance} and "
                    f"{rel_bad} the relative one (allowed {allowed:g}); max |x - y| = {worst:g}",
                    message,
                )
            )

    def _to_numpy(self, t: torch.Tensor, message: str | None) -> np.ndarray:
        if t.dtype not in (
            torch.bool,
            torch.uint8,
            torch.int8,
            torch.uint16,
            torch.int16,
            torch.int32,
            torch.int64,
            torch.float16,
            torch.float32,
            torch.float64,
        ):
            self.fail(self._message(f"required numpy-convertible dtype, got {t.dtype} (convert it first)", message))
        return t.detach().cpu().resolve_conj().resolve_neg().numpy()

    @staticmethod
    def _message(text: str, message: str | None) -> str:
        return f"{text}: {message}" if message else text

    # ---------------------------------------------------------------------- assertEqual family

    def assertTensorsSlowEqual(  # noqa: N802 - torch_npu's name
        self, x: torch.Tensor, y: torch.Tensor, prec: float | None = None, message: str = ""
    ) -> None:
        """Same size and dtype; the largest element difference is at most ``prec``."""
        self.assertEqual(x.size(), y.size())
        self.assertEqual(x.dtype, y.dtype)
        y = y.type_as(x)
        if x.dtype == torch.bool:
            self.assertEqual(x, y)
            return
        prec = self.precision if prec is None else prec
        max_err = 0.0
        if x.numel() > 0:
            max_err = float((x.double() - y.double()).abs().max())
            if math.isnan(max_err):
                max_err = max(abs(float(x[i]) - float(y[i])) for i in iter_indices(x))
        self.assertLessEqual(max_err, prec, message)

    def assertEqual(  # noqa: N802 - torch_npu's signature
        self,
        x: object,
        y: object,
        prec: float | str | None = None,
        message: str = "",
        allow_inf: bool = False,
        exact_dtype: bool | None = None,
    ) -> None:
        """Equality with a tolerance (see the module docstring)."""
        if exact_dtype is None:
            exact_dtype = self.exact_dtype
        if isinstance(prec, str) and message == "":
            message, prec = prec, None
        if prec is None:
            prec = self.precision
        self._assert_equal(x, y, prec, message or None, allow_inf, exact_dtype)

    def _assert_equal(self, x, y, prec, message, allow_inf, exact_dtype) -> None:
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            self._assert_tensor_equal(x, y, prec, message, allow_inf, exact_dtype)
        elif isinstance(x, torch.Tensor) and isinstance(y, Number) and x.numel() == 1:
            self._assert_number_equal(x.item(), y, prec, message, allow_inf)
        elif isinstance(y, torch.Tensor) and isinstance(x, Number) and y.numel() == 1:
            self._assert_number_equal(x, y.item(), prec, message, allow_inf)
        elif isinstance(x, (bool, np.bool_)) or isinstance(y, (bool, np.bool_)):
            super().assertEqual(x, y, message)
        elif isinstance(x, Number) and isinstance(y, Number):
            self._assert_number_equal(x, y, prec, message, allow_inf)
        elif isinstance(x, (str, bytes)) or isinstance(y, (str, bytes)):
            super().assertEqual(x, y, message)
        elif isinstance(x, (set, frozenset)) and isinstance(y, (set, frozenset)):
            super().assertEqual(x, y, message)
        elif isinstance(x, Mapping) and isinstance(y, Mapping):
            super().assertEqual(set(x.keys()), set(y.keys()), message)
            for key in x:
                self._assert_equal(x[key], y[key], prec, message, allow_inf, exact_dtype)
        elif isinstance(x, (torch.dtype, torch.device)) or isinstance(y, (torch.dtype, torch.device)):
            super().assertEqual(x, y, message)
        elif is_iterable(x) and is_iterable(y) and not isinstance(x, torch.Tensor) and not isinstance(y, torch.Tensor):
            x_items, y_items = list(x), list(y)
            super().assertEqual(len(x_items), len(y_items), message)
            for x_item, y_item in zip(x_items, y_items):
                self._assert_equal(x_item, y_item, prec, message, allow_inf, exact_dtype)
        else:
            super().assertEqual(x, y, message)

    def _assert_number_equal(self, x, y, prec, message, allow_inf) -> None:
        if math.isinf(abs(x)) or math.isinf(abs(y)):
            if not allow_inf:
                self.fail(self._message(f"Expected finite numeric values - x={x}, y={y}", message))
            super().assertEqual(x, y, message)
            return
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            return
        self.assertLessEqual(abs(x - y), prec, message)

    def _assert_tensor_equal(self, x, y, prec, message, allow_inf, exact_dtype) -> None:
        super().assertEqual(x.size(), y.size(), message)
        if exact_dtype:
            super().assertEqual(x.dtype, y.dtype, message)
        if x.numel() == 0:
            return
        if x.dtype == torch.bool or y.dtype == torch.bool:
            if x.dtype != y.dtype:
                raise TypeError("Was expecting both tensors to be bool type.")
            self.assertTrue(torch.equal(x.cpu(), y.cpu()), message)
            return
        a, b = x.detach().cpu().to(torch.float64), y.detach().cpu().to(torch.float64)
        nan = torch.isnan(a)
        self.assertTrue(torch.equal(nan, torch.isnan(b)), self._message("NaNs in different places", message))
        diff = (a - b).abs()
        diff[nan] = 0
        inf = torch.isinf(a)
        if allow_inf:
            self.assertTrue(torch.equal(a[inf], b[inf]), self._message("infinities differ", message))
            diff[inf] = 0
        self.assertLessEqual(float(diff.max()), prec, message)

    def assertAlmostEqual(  # noqa: N802 - torch_npu's signature
        self, x: object, y: object, places: int | None = None, msg: str | None = None, delta: float | None = None
    ) -> None:
        """:meth:`assertEqual` with ``prec = 10**-places`` or ``delta``."""
        prec = 10 ** (-places) if places else delta
        self.assertEqual(x, y, prec, msg or "")

    def assertNotEqual(  # noqa: N802 - torch_npu's signature
        self, x: object, y: object, prec: float | str | None = None, message: str = ""
    ) -> None:
        """Fails when ``x`` and ``y`` are equal within ``prec`` (tensors: max difference < prec)."""
        if isinstance(prec, str) and message == "":
            message, prec = prec, None
        if prec is None:
            prec = self.precision
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.size() != y.size():
                return
            self.assertGreater(x.numel(), 0)
            a, b = x.detach().cpu().to(torch.float64), y.detach().cpu().to(torch.float64)
            diff = (a - b).abs()
            diff[torch.isnan(a) & torch.isnan(b)] = 0
            diff[torch.isnan(a) ^ torch.isnan(b)] = math.inf
            self.assertGreaterEqual(float(diff.max()), prec, message)
        elif isinstance(x, Number) and isinstance(y, Number) and not isinstance(x, bool):
            self.assertGreaterEqual(abs(x - y), prec, message)
        else:
            super().assertNotEqual(x, y, message)

    def assertObjectIn(self, obj: object, iterable: object) -> None:  # noqa: N802 - torch_npu's name
        """``obj`` itself (identity, not equality) is an element of ``iterable``."""
        if not any(item is obj for item in iterable):
            raise AssertionError("object not found in iterable")

    def assertNotWarn(self, call_fn: Callable[[], object], msg: str = "") -> None:  # noqa: N802
        """``call_fn()`` emits no warning."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call_fn()
        self.assertTrue(len(caught) == 0, msg or f"unexpected warnings: {[str(w.message) for w in caught]}")

    @contextlib.contextmanager
    def maybeWarnsRegex(self, category: type[Warning], regex: str = "") -> Iterator[None]:  # noqa: N802
        """The block may warn ``category`` matching ``regex``; any other warning fails the test."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.filterwarnings("ignore", message=regex, category=category)
            yield
        unexpected = [w for w in caught if not (issubclass(w.category, category) and re.match(regex, str(w.message)))]
        if unexpected:
            self.fail(
                "Caught unexpected warnings:\n"
                + "".join(
                    warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in unexpected
                )
            )
