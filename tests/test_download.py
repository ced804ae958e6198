"""`sage datasets download` against a real HTTP server on 127.0.0.1 that serves archives shaped like each
source's: every layout ends complete, and cut-off, range-refusing, corrupt, missing and huge archives, no
network and an unwritable root each end in one line and nothing half-installed."""

import shutil
from pathlib import Path

import pytest
from download_fixtures import Mirror, build_archives
from typer.testing import CliRunner

from sage_cli.cli import app
from sage_cli.data.download import DOWNLOADS, MANIFEST, status_of
from sage_cli.data.sources import sources

RECIPES = Path(__file__).parents[1] / "recipes"


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mirror") / "files"
    return folder, build_archives(folder)


@pytest.fixture
def mirror(archives, monkeypatch):
    with Mirror(archives[0]) as m:
        monkeypatch.setenv("SAGE_DOWNLOAD_MIRROR", m.url)
        yield m


def download(root, *names, extra=()):
    return CliRunner().invoke(app, ["datasets", "download", *names, "--root", str(root), *extra])


def test_every_source_is_mirrored_by_the_fixture(archives):
    """The fixture builds exactly the archives each source names (same file names)."""
    _, built = archives
    assert {n: [a.name for a in s.archives] for n, s in sources().items()} == built


@pytest.mark.parametrize("name", sorted(sources()))
def test_each_dataset_downloads_into_the_layout_sage_datasets_accepts(mirror, tmp_path, name):
    result = download(tmp_path, name)
    assert result.exit_code == 0, result.output
    assert status_of(tmp_path, name) == "complete"
    assert f"{name}: installed at {tmp_path / sources()[name].directory}" in result.output
    assert sorted(p.name for p in (tmp_path / DOWNLOADS).iterdir()) == [MANIFEST]  # archives, scratch: gone
    fetched = [r for r in mirror.requests if r[0] == "GET" and r[1] != "SHA256SUMS"]
    assert len(fetched) == len(sources()[name].archives)
    again = download(tmp_path, name)
    assert again.exit_code == 0 and "complete at" in again.output and "skipped" in again.output
    assert [r for r in mirror.requests if r[0] == "GET" and r[1] != "SHA256SUMS"] == fetched  # nothing fetched


def test_terra_incognita_is_sorted_by_location_and_class(mirror, tmp_path):
    assert download(tmp_path, "terraincognita").exit_code == 0
    base = tmp_path / "terra_incognita"
    assert sorted(p.name for p in base.iterdir()) == ["location_100", "location_38", "location_43", "location_46"]
    counts = {c.name: len(list(c.iterdir())) for c in (base / "location_38").iterdir()}
    assert counts == {"bird": 1, "dog": 2, "empty": 1}  # 'car' is not a DomainBed class; one image has two


def test_officehome_download_then_datasets_then_a_three_step_run(mirror, tmp_path, monkeypatch):
    root = tmp_path / "data"
    assert download(root, "officehome").exit_code == 0
    listing = CliRunner().invoke(app, ["datasets", "--root", str(root)])
    assert listing.exit_code == 0
    row = next(line for line in listing.output.splitlines() if line.startswith("│ officehome"))
    assert " ok " in row
    assert f"pacs: not found; fetch it with: sage datasets download pacs --root {root}" in listing.output
    manifest = (root / DOWNLOADS / MANIFEST).read_text()
    assert "office_home.zip" in manifest and '"verified": "sha256"' in manifest  # the mirror's SHA256SUMS
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = CliRunner().invoke(app, ["run", str(RECIPES / "officehome.yaml"), "--set", f"dataset.root={root}",
                                   "--set", "dataset.image_size=32", "--set", "backbone.model=ViT-Tiny-16",
                                   "--set", "backbone.pretrained=null", "--set", "training.steps=3",
                                   "--set", "training.checkpoint_freq=2"])
    assert run.exit_code == 0, run.output
    assert "target env 0 accuracy" in run.output


def test_a_cut_off_download_is_resumed_with_a_range_request(mirror, tmp_path):
    mirror.behaviour["office_home.zip"] = {"cut"}
    first = download(tmp_path, "officehome")
    assert first.exit_code == 2 and "run the same command again to resume" in first.output
    assert not (tmp_path / "office_home").exists()  # nothing `sage datasets` could take for a dataset
    part = tmp_path / DOWNLOADS / "office_home.zip.part"
    offset = part.stat().st_size
    assert offset > 0
    second = download(tmp_path, "officehome")
    assert second.exit_code == 0, second.output
    assert ("GET", "office_home.zip", f"bytes={offset}-") in mirror.requests
    assert status_of(tmp_path, "officehome") == "complete"


def test_a_server_that_refuses_ranges_restarts_from_zero(mirror, tmp_path):
    mirror.behaviour["PACS.zip"] = {"cut", "norange"}
    assert download(tmp_path, "pacs").exit_code == 2
    second = download(tmp_path, "pacs")
    assert second.exit_code == 0, second.output
    assert "does not resume downloads; starting it again from zero" in second.output
    assert status_of(tmp_path, "pacs") == "complete"


def test_a_wrong_checksum_is_an_error_and_leaves_nothing(mirror, archives, tmp_path):
    folder, _ = archives
    sums = (folder / "SHA256SUMS").read_text()
    try:
        (folder / "SHA256SUMS").write_text(sums.replace(sums.split()[sums.split().index("VLCS.tar.gz") - 1], "0" * 64))
        result = download(tmp_path, "vlcs")
    finally:
        (folder / "SHA256SUMS").write_text(sums)
    assert result.exit_code == 2 and "does not match the published" in result.output
    assert len(result.output.strip().splitlines()[-1]) > 0 and "Traceback" not in result.output
    assert not (tmp_path / "VLCS").exists()
    assert [p.name for p in (tmp_path / DOWNLOADS).iterdir()] == []


def test_a_missing_archive_names_the_url_and_the_dataset(mirror, archives, tmp_path):
    folder, _ = archives
    (folder / "sketch.zip").rename(folder / "sketch.zip.away")
    try:
        result = download(tmp_path, "domainnet")
    finally:
        (folder / "sketch.zip.away").rename(folder / "sketch.zip")
    assert result.exit_code == 2
    assert f"the source of domainnet answered HTTP 404 for {mirror.url}/sketch.zip" in result.output
    assert not (tmp_path / "domain_net").exists()


def test_a_web_page_instead_of_an_archive(mirror, tmp_path):
    mirror.behaviour["cityscapes.zip"] = {"html"}
    result = download(tmp_path, "cityscapes")
    assert result.exit_code == 2 and "served a web page instead of the cityscapes archive" in result.output
    assert not (tmp_path / "cityscapes").exists()


def test_not_enough_disk_space_is_found_before_downloading(mirror, tmp_path):
    mirror.behaviour["nyuv2.zip"] = {"huge"}
    result = download(tmp_path, "nyuv2")
    assert result.exit_code == 2 and "not enough disk space" in result.output and "GB free" in result.output
    assert not [r for r in mirror.requests if r[0] == "GET" and r[1] == "nyuv2.zip"]


def test_no_network(monkeypatch, tmp_path):
    monkeypatch.setenv("SAGE_DOWNLOAD_MIRROR", "http://127.0.0.1:1")
    result = download(tmp_path, "pacs")
    assert result.exit_code == 2 and "cannot reach 127.0.0.1:1" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unwritable_root_and_unknown_dataset(mirror, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = download(blocker / "data", "pacs")
    assert result.exit_code == 2 and "cannot write to the data root" in result.output
    result = download(tmp_path, "mnist")
    assert result.exit_code == 2 and "unknown dataset 'mnist'" in result.output


def test_an_incomplete_folder_is_not_replaced_without_force(mirror, tmp_path):
    (tmp_path / "PACS" / "photo").mkdir(parents=True)
    result = download(tmp_path, "pacs")
    assert result.exit_code == 2 and "is there but incomplete" in result.output and "--force" in result.output
    assert download(tmp_path, "pacs", extra=("--force",)).exit_code == 0
    assert status_of(tmp_path, "pacs") == "complete"


@pytest.fixture
def own_mirror(archives, tmp_path, monkeypatch):
    """A mirror over a copy of the archives, whose files a test may rewrite."""
    folder = tmp_path / "served"
    shutil.copytree(archives[0], folder)
    with Mirror(folder) as m:
        monkeypatch.setenv("SAGE_DOWNLOAD_MIRROR", m.url)
        yield folder


def _bsd(gnu: str) -> str:
    """`sha256sum` lines rewritten as BSD's (`shasum --tag`, `sha256 -r` on macOS/BSD)."""
    return "".join(f"SHA256 ({name.lstrip('*')}) = {hexdigest}\n"
                   for hexdigest, name in (line.split() for line in gnu.splitlines() if line.strip()))


def test_bsd_checksum_lines_are_verified_like_gnu_ones(own_mirror, tmp_path):
    gnu = (own_mirror / "SHA256SUMS").read_text()
    (own_mirror / "SHA256SUMS").write_text(_bsd(gnu))
    root = tmp_path / "root"
    assert download(root, "vlcs").exit_code == 0
    assert '"verified": "sha256"' in (root / DOWNLOADS / MANIFEST).read_text()
    wrong = gnu.split()[gnu.split().index("VLCS.tar.gz") - 1]
    (own_mirror / "SHA256SUMS").write_text(_bsd(gnu.replace(wrong, "0" * 64)))
    again = download(tmp_path / "other", "vlcs")
    assert again.exit_code == 2 and "does not match the published" in again.output


def test_a_checksum_line_of_neither_format_is_an_error_not_a_silent_skip(own_mirror, tmp_path):
    gnu = (own_mirror / "SHA256SUMS").read_text()
    (own_mirror / "SHA256SUMS").write_text(gnu + "VLCS.tar.gz: 1234 (not a checksum line)\n")
    result = download(tmp_path, "vlcs")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "is not a SHA-256 checksum line" in result.output and not (tmp_path / "VLCS").exists()


def test_an_archive_that_expands_beyond_the_free_space_is_refused_and_leaves_nothing(own_mirror, tmp_path):
    import zipfile

    from test_faults import small_filesystem

    with zipfile.ZipFile(own_mirror / "PACS.zip", "w", zipfile.ZIP_DEFLATED) as z:  # 24 MB of zeros: ~25 KB
        z.writestr("kfold/art_painting/dog/pic_001.jpg", b"\0" * 24_000_000)
    (own_mirror / "SHA256SUMS").unlink()
    with small_filesystem(tmp_path / "root", "8m") as root:
        result = download(root, "pacs")
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "PACS.zip expands to 0.02 GB" in result.output and "the archive is kept" in result.output
        left = sorted(p.name for p in (root / DOWNLOADS).iterdir())
        assert left == ["PACS.zip"]  # no partial extraction filling the disk
