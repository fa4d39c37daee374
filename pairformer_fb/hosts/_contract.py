"""Static check of the adapter contract: mypy verifies that each host's adapter module satisfies
``base.HostAdapter`` (``make lint``). Never imported at run time (it would import every host's
adapter); ``tests/test_hosts_contract.py`` checks the same at run time."""

from .base import HostAdapter
from .boltz import adapter as boltz
from .openfold3 import adapter as openfold3
from .protenix import adapter as protenix

ADAPTERS: dict[str, HostAdapter] = {"boltz": boltz, "openfold3": openfold3, "protenix": protenix}
