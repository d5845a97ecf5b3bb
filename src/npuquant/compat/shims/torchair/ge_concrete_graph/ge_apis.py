"""``torchair.ge_concrete_graph.ge_apis`` stand-in: importable (scripts import it as ``ge``), but the
GE graph-construction API itself is not emulated, since graphs run through torch.compile on the CPU."""


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(
        f"torchair.ge_concrete_graph.ge_apis.{name}: GE graph construction is not emulated by npuquant.compat "
        "(compiled graphs run through torch.compile on the CPU)"
    )
