"""A one-line layer description for the command line, e.g.

    conv:20:5:relu,conv:40:5:relu,fc:100:relu,softmax

``conv:FILTERS:KERNEL[:ACT][:pool=P]``, ``fc:UNITS[:ACT][:dropout=P]``,
``softmax[:dropout=P]``; images are 1x28x28 and each layer's input size is inferred.
"""

from __future__ import annotations

from convnet.errors import ArgumentError
from convnet.layers import ConvPoolLayer, FullyConnectedLayer, Layer, SoftmaxLayer


def _split(token: str) -> tuple[list[str], dict[str, str]]:
    plain, named = [], {}
    for part in token.split(":"):
        if "=" in part:
            key, value = part.split("=", 1)
            if key in named:
                raise ArgumentError(f"option {key}= given twice")
            named[key] = value
        else:
            plain.append(part)
    return plain, named


# What each kind of item may hold: (most plain fields, the named options).
_FIELDS = {"conv": (4, ("pool",)), "fc": (3, ("dropout",)), "softmax": (1, ("dropout", "classes"))}


def _check_fields(kind: str, plain: list[str], named: dict[str, str]) -> None:
    """Nothing typed in ``--layers`` is silently dropped: no unknown option, no extra field."""
    most, options = _FIELDS[kind]
    unknown = sorted(set(named) - set(options))
    if unknown:
        raise ArgumentError(
            f"unknown option {unknown[0]!r} for {kind} (it takes "
            f"{', '.join(o + '=' for o in options)})"
        )
    if len(plain) > most:
        raise ArgumentError(
            f"expected at most {most} fields separated by ':' for {kind}. "
            f"Received: {len(plain)} ({':'.join(plain)})"
        )


def parse(
    spec: str, mini_batch_size: int, image_shape: tuple[int, ...] = (1, 28, 28)
) -> list[Layer]:
    layers: list[Layer] = []
    shape: tuple[int, ...] = image_shape
    for position, token in enumerate(t.strip() for t in spec.split(",")):
        try:
            plain, named = _split(token)
            kind = plain[0] if plain else ""
            if kind not in _FIELDS:
                raise ArgumentError(f"unknown layer kind {kind!r} (use conv, fc or softmax)")
            _check_fields(kind, plain, named)
            if kind == "conv":
                filters, kernel = int(plain[1]), int(plain[2])
                pool = int(named.get("pool", 2))
                layer: Layer = ConvPoolLayer(
                    filter_shape=(filters, shape[0], kernel, kernel),
                    image_shape=(mini_batch_size, *shape),
                    poolsize=(pool, pool),
                    activation_fn=plain[3] if len(plain) > 3 else "sigmoid",
                )
            elif kind == "fc":
                layer = FullyConnectedLayer(
                    _size(shape),
                    int(plain[1]),
                    plain[2] if len(plain) > 2 else "sigmoid",
                    float(named.get("dropout", 0.0)),
                )
            elif kind == "softmax":
                layer = SoftmaxLayer(
                    _size(shape), int(named.get("classes", 10)), float(named.get("dropout", 0.0))
                )
        except (IndexError, ValueError) as exc:
            raise ArgumentError(f"--layers: item {position + 1} {token!r}: {exc}") from None
        layers.append(layer)
        shape = layer.output_shape
    if not layers or not isinstance(layers[-1], SoftmaxLayer):
        raise ArgumentError(f"--layers: expected the last item to be softmax. Received: {spec!r}.")
    return layers


def _size(shape: tuple[int, ...]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total
