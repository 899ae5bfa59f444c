"""midpo: safety + helpfulness alignment with MidPO (SPE-DPO experts mixed by learned routers).

Importing the package must stay cheap: `midpo --help` and recipe validation never touch torch.
Heavy entry points are resolved lazily through `__getattr__`.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_midpo"]


def __getattr__(name: str):
    if name == "load_midpo":
        from midpo_cli.modeling.midpo import load_midpo

        return load_midpo
    raise AttributeError(name)
