"""An exact calculator: arithmetic on rationals, parsed with `ast` (no code is evaluated)."""

from __future__ import annotations

import ast
import math
import operator
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Annotated

from puyu_jax.agent.tool import Tool

__all__ = ["Calculator", "calculate"]

_MAX_BITS = 100_000  # refuse results (and powers) beyond this size
_DIGITS = 30  # significant digits shown for inexact results

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
_EXACT_FUNCS = ("sqrt", "abs", "floor", "ceil", "round", "factorial", "gcd", "lcm", "min", "max", "log")
_FLOAT_FUNCS = {
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos, "atan": math.atan,
    "exp": math.exp, "ln": math.log, "log10": math.log10, "log2": math.log2, "sinh": math.sinh, "cosh": math.cosh,
    "tanh": math.tanh, "degrees": math.degrees, "radians": math.radians,
}

_FUNCTIONS = frozenset(_EXACT_FUNCS) | frozenset(_FLOAT_FUNCS)


class _Value:
    """A rational with an exactness flag (irrational functions and constants make it inexact)."""

    __slots__ = ("q", "exact")

    def __init__(self, q: Fraction, exact: bool = True):
        self.q, self.exact = q, exact


def _check_size(q: Fraction) -> Fraction:
    if q.numerator.bit_length() > _MAX_BITS or q.denominator.bit_length() > _MAX_BITS:
        raise ValueError("the number is too large")
    return q


def _sqrt(v: _Value) -> _Value:
    if v.q < 0:
        raise ValueError("sqrt of a negative number")
    n, d = v.q.numerator, v.q.denominator
    rn, rd = math.isqrt(n), math.isqrt(d)
    if rn * rn == n and rd * rd == d:
        return _Value(Fraction(rn, rd), v.exact)
    with localcontext() as ctx:
        ctx.prec = _DIGITS + 10
        root = (Decimal(n) / Decimal(d)).sqrt()
    return _Value(Fraction(root), False)


def _int_arg(v: _Value, fn: str) -> int:
    if v.q.denominator != 1:
        raise ValueError(f"{fn} needs an integer, got {_show(v)}")
    return v.q.numerator


def _call(name: str, args: list[_Value]) -> _Value:
    exact = all(a.exact for a in args)
    if name == "sqrt" and len(args) == 1:
        return _sqrt(args[0])
    if name == "abs" and len(args) == 1:
        return _Value(abs(args[0].q), exact)
    if name in ("floor", "ceil", "round") and len(args) == 1:
        f = {"floor": math.floor, "ceil": math.ceil, "round": round}[name]
        return _Value(Fraction(f(args[0].q)), exact)
    if name == "round" and len(args) == 2:
        return _Value(Fraction(round(args[0].q, _int_arg(args[1], name))), exact)
    if name == "factorial" and len(args) == 1:
        n = _int_arg(args[0], name)
        if not 0 <= n <= 5000:
            raise ValueError("factorial needs 0 <= n <= 5000")
        return _Value(Fraction(math.factorial(n)), exact)
    if name in ("gcd", "lcm") and args:
        f = math.gcd if name == "gcd" else math.lcm
        return _Value(Fraction(f(*(_int_arg(a, name) for a in args))), exact)
    if name in ("min", "max") and args:
        f = min if name == "min" else max
        best = f(args, key=lambda a: a.q)
        return _Value(best.q, exact)
    if name == "log" and len(args) in (1, 2):
        x = float(args[0].q)
        out = math.log(x) if len(args) == 1 else math.log(x, float(args[1].q))
        return _Value(Fraction(out), False)
    if name in _FLOAT_FUNCS and len(args) == 1:
        return _Value(Fraction(_FLOAT_FUNCS[name](float(args[0].q))), False)
    raise ValueError(f"{name}() does not take {len(args)} argument(s)")


def _eval(node: ast.AST) -> _Value:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        # a float literal like 0.1 means the decimal 1/10, exactly
        return _Value(Fraction(str(node.value)) if isinstance(node.value, float) else Fraction(node.value))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _Value(Fraction(_CONSTANTS[node.id]), False)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _eval(node.operand)
        return _Value(-v.q if isinstance(node.op, ast.USub) else v.q, v.exact)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _eval(node.left), _eval(node.right)
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and b.q == 0:
            raise ZeroDivisionError("division by zero")
        return _Value(_check_size(_BINOPS[type(node.op)](a.q, b.q)), a.exact and b.exact)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        a, b = _eval(node.left), _eval(node.right)
        if b.q.denominator == 1:
            n = b.q.numerator
            if a.q == 0 and n < 0:
                raise ZeroDivisionError("0 to a negative power")
            size = max(a.q.numerator.bit_length(), a.q.denominator.bit_length())
            if size * abs(n) > _MAX_BITS:
                raise ValueError("the power is too large")
            return _Value(a.q ** n, a.exact and b.exact)
        if b.q == Fraction(1, 2):
            return _sqrt(a)
        if a.q < 0:
            raise ValueError("a fractional power of a negative number is not real")
        return _Value(Fraction(float(a.q) ** float(b.q)), False)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        if node.func.id not in _FUNCTIONS:
            raise ValueError(f"unknown function {node.func.id}(); known: {', '.join(sorted(_FUNCTIONS))}")
        return _call(node.func.id, [_eval(a) for a in node.args])
    what = ast.unparse(node) if isinstance(node, ast.AST) else repr(node)
    raise ValueError(f"not allowed in an arithmetic expression: {what!r}")


def _show(v: _Value) -> str:
    q = v.q
    if v.exact:
        if q.denominator == 1:
            return str(q.numerator)
        d = q.denominator
        for f in (2, 5):
            while d % f == 0:
                d //= f
        if d == 1:  # a terminating decimal: show it exactly
            digits = max(q.denominator.bit_length(), 1) + 1
            with localcontext() as ctx:
                ctx.prec = len(str(q.numerator)) + digits
                return f"{(Decimal(q.numerator) / Decimal(q.denominator)).normalize():f}"
        with localcontext() as ctx:
            ctx.prec = _DIGITS
            approx = Decimal(q.numerator) / Decimal(q.denominator)
        return f"{q.numerator}/{q.denominator} (≈ {approx.normalize()})"
    with localcontext() as ctx:
        ctx.prec = 15  # the inexact functions are computed in double precision
        approx = Decimal(q.numerator) / Decimal(q.denominator)
    return f"≈ {approx.normalize():f}" if abs(approx) < Decimal(10) ** 15 else f"≈ {approx.normalize()}"


def calculate(expression: str) -> str:
    """Evaluates an arithmetic expression exactly; raises ValueError/ZeroDivisionError with a reason.

    Integers and decimals are exact rationals (`0.1 + 0.2` is exactly `3/10`); `^` means power;
    irrational functions (sqrt of a non-square, sin, log, ...) give a result marked `≈`.
    """
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    if len(text) > 2000:
        raise ValueError("the expression is too long")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"cannot parse {expression!r}: {e.msg}") from None
    return _show(_eval(tree))


class Calculator(Tool):
    """Exact arithmetic, safe to call with any model output."""

    name = "calculator"
    description = (
        "Evaluates an arithmetic expression exactly, e.g. `(3 + 4) * 2^10 / 7` or `sqrt(2) * pi`. Supports "
        "+ - * / // % ^ (or **), parentheses, sqrt, abs, floor, ceil, round, factorial, gcd, lcm, min, max, "
        "log, ln, exp, sin, cos, tan and the constants pi, e."
    )

    def run(self, expression: Annotated[str, "the arithmetic expression"]) -> str:
        return calculate(expression)
