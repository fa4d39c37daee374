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


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_after_sampling_classes_are_modules_of_the_full_model(host):
    """The classes at which patch_model releases the cached diffusion biases (the confidence
    heads) exist in the host's full model (its tiny preset)."""
    pytest.importorskip(host)
    from pairformer_fb.hosts import host_module

    presets = host_module(host, "presets")
    model = {
        "protenix": lambda: presets.build_protenix("tiny")[0],
        "openfold3": lambda: presets.build_openfold3("tiny"),
        "boltz": lambda: presets.build_boltz2(),
    }[host]()
    names = {type(m).__name__ for m in model.modules()}
    adapter = get_adapter(host)
    assert set(adapter.AFTER_SAMPLING_CLASSES) <= names, (adapter.AFTER_SAMPLING_CLASSES, host)
