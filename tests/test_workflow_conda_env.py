"""envs/lossgeom.yaml built the way Snakemake 9 builds it for `--sdm conda`, without conda.

Snakemake never builds an environment from the file in envs/ (snakemake/deployment/conda.py, 9.27):
  - `Env.address` puts the environment at <conda-prefix>/<md5 of prefix, post-deploy script and env
    file> (`_get_hash`, `address`), the prefix being .snakemake/conda in the working directory
    (persistence/__init__.py, `conda_env_path`);
  - `create_env` copies the env file to <that path>.yaml and runs `conda env create --file <copy>`;
    conda runs the pip part as `pip install -U -r condaenv.*.requirements.txt` with the copy's
    directory as working directory (conda/env/installers/pip.py: `pip_workdir`);
  - the post-deploy script beside the env file (same name, `.post-deploy.sh`) is copied to
    <that path>.post-deploy.sh and run as `source activate <env>; <shebang interpreter> <copy>` from
    Snakemake's own working directory (`execute_deployment_script`); a failure deletes the env.

The tests below run Snakemake's own `Env.create()` on a temporary copy of the checkout. Only conda
is stood in for: a fake `conda` on PATH makes a venv that sees this interpreter's site-packages,
be it a system Python's or a virtualenv's (the conda dependencies, which `pip install -e .[test]`
put there and which must mirror pyproject.toml), and runs the pip part as conda does (plus
--no-deps); `Env.conda` activates that venv. PIP_NO_INDEX keeps every pip call off the network:
what is not already installed fails instead of downloading.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
ENV_FILE = Path("envs/lossgeom.yaml")

# pyproject name -> conda-forge name, where they differ.
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
# Conda packages that are not runtime dependencies of the package.
CONDA_TOOLING = {"python", "pip", "setuptools"}

# The env file as it was when issue 15 was filed: the harness must reproduce its failure.
ISSUE_15_ENV = """\
channels:
  - conda-forge
  - nodefaults
dependencies:
  - python=3.11
  - pip
  - pytorch>=2.4
  - pip:
      - --editable ../
"""

# `conda env create --file F --prefix P`, as far as Snakemake uses it, without conda: the conda
# dependencies come from this interpreter's site-packages; the pip part runs as conda runs it.
FAKE_CONDA = """\
#!{python}
import argparse, glob, os, site, subprocess, sys, tempfile, venv
import yaml

p = argparse.ArgumentParser()
p.add_argument("words", nargs=2)
p.add_argument("--quiet", action="store_true")
p.add_argument("--no-default-packages", action="store_true")
p.add_argument("--file", required=True)
p.add_argument("--prefix", required=True)
args = p.parse_args()
if args.words != ["env", "create"]:
    sys.exit(f"fake conda: unexpected command {{sys.argv[1:]}}")
# The venv must see this interpreter's site-packages, whether it is a system Python or a
# virtualenv. `system_site_packages=True` would not do: venv builds from the *base* interpreter
# (sys._base_executable), so a venv made from a virtualenv sees the base's site-packages, not the
# virtualenv's. Instead, a .pth file adds this interpreter's site directories (processing their .pth
# files, as site does for system site-packages), named to run after the venv's own .pth files
# (the editable lossgeom that the post-deploy script installs): the venv's own packages come first.
venv.create(args.prefix, system_site_packages=False, with_pip=False)
outer = list(site.getsitepackages())
if site.ENABLE_USER_SITE:
    outer.append(site.getusersitepackages())
outer = [d for d in dict.fromkeys(outer) if os.path.isdir(d)]
(own,) = glob.glob(os.path.join(args.prefix, "lib", "python*", "site-packages"))
with open(os.path.join(own, "zz-fake-conda-outer-site.pth"), "w") as f:
    f.write(f"import site; list(map(site.addsitedir, {{outer!r}}))\\n")
with open(args.file) as f:
    deps = yaml.safe_load(f)["dependencies"]
specs = [s for d in deps if isinstance(d, dict) for s in d.get("pip", [])]
if specs:
    # conda/env/installers/pip.py: the requirements file and pip's cwd are the env file's directory.
    workdir = os.path.dirname(os.path.abspath(args.file))
    with tempfile.NamedTemporaryFile(
        "w", prefix="condaenv.", suffix=".requirements.txt", dir=workdir, delete=False
    ) as req:
        req.write("\\n".join(specs))
    pip = [os.path.join(args.prefix, "bin", "python"), "-m", "pip"]
    run = subprocess.run(
        # conda's command, plus --no-deps: resolving the named packages' own dependencies is the
        # solve this stand-in does not redo (and takes seconds); paths resolve the same either way.
        pip + ["install", "-U", "--no-deps", "-r", req.name, "--exists-action=b"], cwd=workdir,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    os.remove(req.name)
    print(run.stdout)
    sys.exit(run.returncode)
"""


class FakeConda:
    """What `Env` asks of `Conda` (pin-file lookup, activation), for a venv."""

    platform = "linux-64"

    def shellcmd(self, env_address, cmd):
        return f"source '{env_address}/bin/activate'; {cmd}"


def _checkout(root: Path) -> Path:
    """A checkout with just what building the package needs."""
    root.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, root / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(REPO / "src", root / "src", ignore=ignore)
    shutil.copytree(REPO / "envs", root / "envs", ignore=ignore)
    return root.resolve()


@pytest.fixture
def deploy(tmp_path, monkeypatch):
    """deploy(checkout, workdir): Snakemake's Env for the checkout's env file, run in workdir."""
    from snakemake.deployment.conda import Env
    from snakemake.sourcecache import SourceCache

    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    (bindir / "conda").write_text(FAKE_CONDA.format(python=sys.executable))
    (bindir / "conda").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    monkeypatch.delenv("LOSSGEOM_CHECKOUT", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)

    def make(checkout: Path, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        # Snakemake chdirs into --directory before anything else (api.py, WorkdirHandler).
        monkeypatch.chdir(workdir)
        dot = workdir / ".snakemake"
        for d in ("conda", "conda-archive", "source_cache"):
            (dot / d).mkdir(parents=True, exist_ok=True)
        workflow = SimpleNamespace(
            persistence=SimpleNamespace(
                conda_env_path=str(dot / "conda"),
                conda_env_archive_path=str(dot / "conda-archive"),
            ),
            sourcecache=SourceCache(dot / "source_cache"),
            deployment_settings=SimpleNamespace(apptainer_args=""),
            runtime_paths=[],
        )
        env = Env(workflow, env_file=str(checkout / ENV_FILE))
        env._conda = FakeConda()  # the cache slot of the lazy `Env.conda`
        return env

    return make


def _installed_from(env_path: str) -> dict:
    """direct_url.json of lossgeom in the environment: where pip installed it from."""
    (info,) = Path(env_path).glob("lib/python*/site-packages/lossgeom-*.dist-info")
    return json.loads((info / "direct_url.json").read_text())


def _imported_from(env_path: str) -> Path:
    """Where the environment's python finds lossgeom (located, not executed)."""
    find = "import importlib.util as u; print(u.find_spec('lossgeom').origin)"
    out = subprocess.run(
        [f"{env_path}/bin/python", "-c", find],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    return Path(out.stdout.strip()).resolve()


def _pip_entries_problems(env_text: str, copy_dir: Path, checkout: Path) -> list[str]:
    """Pip entries other than named requirements or the checkout, and where they point."""
    deps = yaml.safe_load(env_text)["dependencies"]
    problems = []
    for spec in (s for d in deps if isinstance(d, dict) for s in d.get("pip", [])):
        try:
            req = Requirement(spec)
            if req.url is None:
                continue
        except InvalidRequirement:
            pass
        words = spec.split()
        target = words[-1]
        where = ""
        if not re.match(r"^[a-z+]+://", target):
            # pip resolves it from its cwd, which conda sets to the copy's directory.
            resolved = (copy_dir / target).resolve()
            if resolved == checkout:
                continue
            where = f" -> {resolved}, not the checkout {checkout}"
        problems.append(f"{spec!r}{where}")
    return problems


def test_env_file_names_no_path_conda_would_resolve_from_its_copy(tmp_path):
    checkout = _checkout(tmp_path / "checkout")
    copy_dir = checkout / ".snakemake" / "conda"
    assert _pip_entries_problems((checkout / ENV_FILE).read_text(), copy_dir, checkout) == []
    # ... and the check sees the issue-15 file's `--editable ../` for what it is.
    (problem,) = _pip_entries_problems(ISSUE_15_ENV, copy_dir, checkout)
    assert f"-> {checkout / '.snakemake'}," in problem


def test_env_file_mirrors_pyproject_dependencies():
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = {}
    for spec in pyproject["project"]["dependencies"]:
        req = Requirement(spec)
        wanted[canonicalize_name(CONDA_NAMES.get(req.name, req.name))] = (req.name, req.specifier)

    deps = yaml.safe_load((REPO / ENV_FILE).read_text())["dependencies"]
    have = {}
    for d in deps:
        if isinstance(d, dict):
            for spec in d["pip"]:
                req = Requirement(spec)
                have[canonicalize_name(req.name)] = req.specifier
        else:
            name, spec = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", d).groups()
            if name in CONDA_TOOLING:
                continue
            have[canonicalize_name(name)] = Requirement(f"x{spec}").specifier

    assert sorted(have) == sorted(wanted), "envs/lossgeom.yaml and pyproject.toml name other packages"
    for name, (pyname, specifier) in wanted.items():
        pinned = [s.version for s in have[name] if s.operator == "=="]
        if pinned:  # the pip part: the locked version, inside pyproject's range (tests/test_workflow_env_locks.py)
            assert specifier.contains(pinned[0]), f"{name}=={pinned[0]} here, outside {pyname}{specifier}"
        else:
            assert have[name] == specifier, f"{name}: {have[name]} here, {pyname}{specifier} in pyproject"


@pytest.mark.heavy
def test_snakemake_builds_env_from_its_copy_with_package_from_checkout(tmp_path, deploy):
    from snakemake.deployment.conda import get_env_setup_done_flag_file

    checkout = _checkout(tmp_path / "checkout")
    env = deploy(checkout, workdir=checkout)

    env_path = env.create()

    assert Path(env_path).parent == checkout / ".snakemake" / "conda"
    assert Path(env_path + ".yaml").read_text() == (checkout / ENV_FILE).read_text()
    assert Path(env_path + ".post-deploy.sh").is_file()  # it ran from the copy
    assert get_env_setup_done_flag_file(Path(env_path)).exists()  # Snakemake will reuse it
    installed = _installed_from(env_path)
    assert installed["url"] == checkout.as_uri()
    assert installed["dir_info"].get("editable") is True
    assert _imported_from(env_path) == checkout / "src" / "lossgeom" / "__init__.py"
    assert (Path(env_path) / "bin" / "lossgeom").exists()


@pytest.mark.heavy
def test_directory_outside_checkout_needs_lossgeom_checkout(tmp_path, deploy, monkeypatch):
    """`snakemake --directory elsewhere`: the script cannot find the checkout alone, and says so."""
    from snakemake.exceptions import CreateCondaEnvironmentException

    checkout = _checkout(tmp_path / "checkout")
    workdir = tmp_path / "elsewhere"

    env = deploy(checkout, workdir=workdir)
    with pytest.raises(CreateCondaEnvironmentException, match="LOSSGEOM_CHECKOUT"):
        env.create()
    assert not Path(env.address).exists()  # not cached half-built

    monkeypatch.setenv("LOSSGEOM_CHECKOUT", str(checkout))
    env = deploy(checkout, workdir=workdir)
    env_path = env.create()
    assert Path(env_path).parent == workdir / ".snakemake" / "conda"
    assert _installed_from(env_path)["url"] == checkout.as_uri()
    assert _imported_from(env_path) == checkout / "src" / "lossgeom" / "__init__.py"


@pytest.mark.heavy
def test_harness_reproduces_issue_15(tmp_path, deploy):
    """The old env file (`pip: [--editable ../]`, no post-deploy script) fails as in the issue."""
    from snakemake.exceptions import CreateCondaEnvironmentException

    checkout = _checkout(tmp_path / "checkout")
    (checkout / "envs" / "lossgeom.post-deploy.sh").unlink(missing_ok=True)
    (checkout / ENV_FILE).write_text(ISSUE_15_ENV)
    env = deploy(checkout, workdir=checkout)

    with pytest.raises(CreateCondaEnvironmentException) as err:
        env.create()
    # pip was pointed at .snakemake/ itself (not the checkout, nor anything inside .snakemake/).
    assert re.search(re.escape((checkout / ".snakemake").as_uri()) + r"(?![/\w])", str(err.value))
    assert "does not appear to be a Python project" in str(err.value)


def test_vllm_env_file_is_the_main_one_without_pytorch_plus_the_vllm_extra():
    """envs/lossgeom-vllm.yaml (the jobs that run vLLM) = envs/lossgeom.yaml's dependencies, less conda's
    pytorch (vLLM's wheel pins the CUDA torch it was built with), plus pyproject's vllm extra; and its
    post-deploy script is the main one's."""
    import tomllib

    def deps(path):
        out = {}
        for d in yaml.safe_load((REPO / path).read_text())["dependencies"]:
            for spec in d["pip"] if isinstance(d, dict) else [d]:
                name, rest = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", spec).groups()
                out[canonicalize_name(name)] = frozenset(rest.replace(" ", "").split(","))  # conda or PEP 440
        return out

    main, gpu = deps(ENV_FILE), deps("envs/lossgeom-vllm.yaml")
    (extra,) = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"]
    vllm = Requirement(extra)
    (pin,) = gpu.pop("vllm")
    assert vllm.specifier.contains(pin.removeprefix("=="))
    # the SLURM plugin is the one pin allowed to differ: vLLM's numpy < 2.4 holds it below 2.7 there
    plugin = "snakemake-executor-plugin-slurm"
    assert gpu.pop(plugin) != main[plugin]
    assert gpu == {k: v for k, v in main.items() if k not in ("pytorch", plugin)}
    link = REPO / "envs" / "lossgeom-vllm.post-deploy.sh"
    assert link.resolve() == (REPO / "envs" / "lossgeom.post-deploy.sh").resolve()
