"""medsam never opens a network connection: the CLI, the MONAI bundle and the napari
reader run with every socket refused."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


class NetworkUsed(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Sockets that cannot connect or send, and no name lookups; returns the attempts.

    ``socket.socket`` is replaced by a subclass (``ssl.SSLSocket`` subclasses it at import)
    whose ``connect``, ``connect_ex``, ``sendto`` and ``bind`` to a non-loopback address
    raise. Making a socket is allowed: urllib3, imported by pydicom, binds one to ``::1`` at
    import to learn whether IPv6 exists, which touches no network.
    """
    attempts: list[str] = []

    def refuse(what, *args):
        attempts.append(f"{what}{args[:2]}")
        raise NetworkUsed(f"network access: {what}{args[:2]}")

    class NoNetworkSocket(socket.socket):
        def connect(self, address):
            refuse("connect", address)

        def connect_ex(self, address):
            refuse("connect_ex", address)

        def sendto(self, *args):
            refuse("sendto", *args)

        def bind(self, address):
            host = address[0] if isinstance(address, tuple) else address
            if host not in ("::1", "127.0.0.1", "localhost"):
                refuse("bind", address)
            super().bind(address)

    monkeypatch.setattr(socket, "socket", NoNetworkSocket)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse("create_connection", *a))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: refuse("getaddrinfo", *a))
    return attempts


@pytest.fixture(scope="module")
def small_ct(sample_data: Path, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("nonet")
    sitk.WriteImage(sitk.ReadImage(str(sample_data / "totalsegmentator" / "example_ct_sm.nii.gz"))[:, :, 14:17],
                    str(d / "ct.nii.gz"))
    return d / "ct.nii.gz"


def test_refusal_is_real(no_network) -> None:
    with pytest.raises(NetworkUsed):
        socket.create_connection(("example.org", 80))
    with socket.socket() as s, pytest.raises(NetworkUsed):
        s.connect(("93.184.215.14", 80))
    assert len(no_network) == 2


def test_cli_without_network(no_network, small_ct: Path, tmp_path: Path) -> None:
    from medsam.cli import main

    out = tmp_path / "liver.nii.gz"
    assert main(["segment", str(small_ct), "-o", str(out), "--box", "1:44,27,104,81", "--device", "cpu"]) == 0
    assert out.exists() and not no_network


def test_monai_bundle_without_network(no_network, small_ct: Path, tmp_path: Path) -> None:
    from monai.bundle import run

    import medsam.monai as mm

    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "ct.nii.gz").write_bytes(small_ct.read_bytes())
    prompts = {"space": "voxel", "objects": [{"label": 1, "prompts": [{"slice": 1, "box": [44, 27, 104, 81]}]}]}
    (cases / "ct.prompts.json").write_text(json.dumps(prompts))
    run(config_file=str(mm.bundle_path() / "configs" / "inference.json"), dataset_dir=str(cases),
        output_dir=str(tmp_path / "masks"), sw_batch_size=2)
    assert (tmp_path / "masks" / "ct_mask.nii.gz").exists() and not no_network


def test_napari_reader_without_network(no_network, small_ct: Path, sample_data: Path) -> None:
    from napari_plugin._reader import get_reader

    for path in (small_ct, sample_data / "totalsegmentator" / "example_ct_dicom"):
        [(data, _, kind)] = get_reader(str(path))(str(path))
        assert kind == "image" and np.asarray(data).ndim == 3
    assert not no_network
