"""Every registered host adapter fulfils the adapter contract (``hosts.base.HostAdapter``) at run
time (mypy checks the signatures statically, ``hosts/_contract.py``), and the contract module
lists every registered host."""

import inspect
from pathlib import Path

import pytest

from pairformer_fb.hosts import HOSTS, HostAdapter, get_adapter


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_adapter_fulfils_the_contract(host):
    pytest.importorskip(host)
    adapter = get_adapter(host)
    assert isinstance(adapter, HostAdapter), f"{host}: missing members of HostAdapter"
    assert adapter.HOST == host and set(adapter.DEFAULT_STACKS) <= set(adapter.STACKS)
    functions = [n for n, v in vars(HostAdapter).items() if inspect.isfunction(v) and not n.startswith("_")]
    assert {"find_sites", "make_replacement", "run_trunk_stack", "sample_runner"} <= set(functions)
    for name in functions:
        want = [p.name for p in inspect.signature(getattr(HostAdapter, name)).parameters.values()][1:]
        got = [p.name for p in inspect.signature(getattr(adapter, name)).parameters.values()]
        assert got == want, f"{host}.{name}{got} differs from the contract's {want}"


def test_contract_module_lists_every_host():
    import pairformer_fb.hosts as hosts

    text = (Path(hosts.__file__).parent / "_contract.py").read_text()  # not imported: it loads every host
    for host in HOSTS:
        assert f'"{host}": {host}' in text, f"{host} missing from hosts/_contract.py ADAPTERS"
