"""``inferforge compare``'s terminal view: the outputs side by side, and the layers around the first one
that diverges."""

from __future__ import annotations

from inferforge.compare import Comparison

LAYER_CONTEXT = 3  # layers shown either side of the first divergent one (--json has them all)


def print_comparison(result: Comparison) -> None:
    from rich.table import Table

    from inferforge.progress import print_table

    print(f"A: {result.a}\nB: {result.b}\n{result.samples} samples, {result.data_origin}; rtol {result.rtol:g}")
    table = Table(title="outputs")
    with_top1 = any(o.top1_agreement is not None for o in result.outputs)  # class scores only, not embeddings
    for col in ("output", "shape", "max abs", "mean abs", "rel L2", "cosine", *(("top-1 agree",) * with_top1),
                "ok"):
        table.add_column(col)
    for o in result.outputs:
        name = o.name if o.other_name is None else f"{o.name} ↔ {o.other_name}"
        top1 = ("" if o.top1_agreement is None else f"{o.top1_agreement:.4f}",) * with_top1
        table.add_row(name, str(list(o.shape)), f"{o.max_abs:.3g}", f"{o.mean_abs:.3g}", f"{o.rel_l2:.3g}",
                      f"{o.cosine:.6f}", *top1, "yes" if o.within_tolerance else f"NO {o.note or ''}".strip(),
                      style=None if o.within_tolerance else "red")
    print_table(table)
    for o in result.outputs:
        if not o.within_tolerance and o.note is None:
            print(f"output {o.name!r} differs: relative L2 error {o.rel_l2:.3g} is {o.rel_l2 / result.rtol:.3g}x "
                  f"the tolerance (--rtol {result.rtol:g}); cosine {o.cosine:.6f}"
                  + (f", top-1 agreement {o.top1_agreement:.2%}" if o.top1_agreement is not None else "")
                  + ". Raise --rtol to accept this drift (INT8 and FP16 builds drift by design).")
    if result.unmatched_outputs:
        print(f"outputs on one side only: {', '.join(result.unmatched_outputs)}")
    layers = result.layers
    if layers.note:
        print(layers.note)
        return
    print(f"layers: {layers.matched} intermediate tensors matched by name "
          f"({layers.only_in_a} only in A, {layers.only_in_b} only in B)")
    first = layers.first_divergent
    if first is None:
        print(f"every matched layer is within rel L2 {result.rtol:g}")
        return
    print(f"first divergent layer: {first.op_type} node {first.node!r} (output {first.output!r}"
          + (f", module {first.scope}" if first.scope else "") + f"): rel L2 {first.rel_l2:.3g}")
    at = layers.layers.index(first)
    table = Table(title="layers around the first divergence")
    for col in ("#", "node", "op", "module", "output", "max abs", "rel L2", "ok"):
        table.add_column(col)
    for i, layer in enumerate(layers.layers[max(0, at - LAYER_CONTEXT): at + LAYER_CONTEXT + 1],
                              max(0, at - LAYER_CONTEXT)):
        table.add_row(str(i), layer.node, layer.op_type, layer.scope or "", layer.output, f"{layer.max_abs:.3g}",
                      f"{layer.rel_l2:.3g}", "yes" if layer.within_tolerance else "NO",
                      style=None if layer.within_tolerance else "red")
    print_table(table)
