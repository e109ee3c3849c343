"""scripts/sweep.py --emit=slurm / --dry_run: the job script and the printed commands are
checked like a run (another sweep's root), never replace a sweep.slurm the user edited, run
from any directory, and refuse flags they would ignore. Each case is a few seconds: no
point trains (the printed commands are run with --dry_run appended)."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from facenet_jax import sweep

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SCRIPT = os.path.join(ROOT, "scripts", "sweep.py")


def _run(args, cwd, check_rc=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("FACENET_TRACEBACK", None)
  r = subprocess.run([sys.executable, SCRIPT, *args], cwd=str(cwd), env=env, capture_output=True,
                     text=True, timeout=300)
  if check_rc is not None:
    assert r.returncode == check_rc, (r.stdout, r.stderr)
  return r


def _error(r) -> str:
  """The one error line of a refused command (exit 2, no traceback)."""
  lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith(("W", "I"))]
  assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
  return lines[0]


@pytest.fixture
def here(tmp_path):
  """A directory outside the repository holding its own config file (a copy of facenet.py)."""
  d = tmp_path / "here"
  d.mkdir()
  shutil.copy(os.path.join(ROOT, "configs", "facenet.py"), d / "myconf.py")
  return d


def test_emit_and_dry_run_refuse_a_root_of_another_sweep(here):
  """--sweep=seed --emit=slurm into a margin sweep's root wrote sweep.slurm, exit 0; every
  array task was then refused on the cluster ("indexes another sweep")."""
  root = here / "root"
  header = {"kind": "sweep", "config_file": str(here / "myconf.py") + ":tiny", "sweep": "margin",
            "base_overrides": {}}
  sweep.write_index(str(root), [{"margin": 0.2}], header=header)
  before = sorted(os.listdir(root))
  for mode in ("--emit=slurm", "--dry_run"):
    r = _run(["--config=myconf.py:tiny", "--sweep=seed", "--workdir=root", mode], here)
    assert re.fullmatch(r"error: root/sweep.json indexes another sweep \(sweep: 'margin' "
                        r"there, 'seed' now\); use another --workdir for this one", _error(r))
    assert not r.stdout
  assert sorted(os.listdir(root)) == before   # no sweep.slurm
  # the same sweep (its index written with the config file as given, relative): accepted
  _run(["--config=myconf.py:tiny", "--sweep=margin", "--workdir=root", "--emit=slurm"], here, 0)
  assert (root / "sweep.slurm").exists()


def test_a_sweep_with_a_tuple_override_or_a_relative_config_file_is_the_same_sweep(tmp_path,
                                                                                   monkeypatch):
  """base_overrides came back from sweep.json as lists: a sweep with --config.model.widths=
  '(4, 8)' refused its own rerun, and every array task after the first one that wrote the
  index. An index recording --config relative is the sweep of that file made absolute (the
  tasks get it absolute), not of another file of that name."""
  monkeypatch.chdir(tmp_path)
  header = {"kind": "sweep", "config_file": "c.py:tiny", "sweep": "seed",
            "base_overrides": {"model.widths": (4, 8), "margin": 0.5}}
  sweep.write_index(str(tmp_path / "r"), [{"seed": 0}], header=header)
  sweep.check_same_sweep(str(tmp_path / "r"), header)
  sweep.check_same_sweep(str(tmp_path / "r"), {**header, "config_file": str(tmp_path / "c.py:tiny")})
  with pytest.raises(sweep.SweepError, match=r"config_file: 'c.py:tiny' there, '/\S+/other/c.py:"
                                             r"tiny' now"):
    sweep.check_same_sweep(str(tmp_path / "r"), {**header, "config_file": str(tmp_path / "other" / "c.py:tiny")})
  with pytest.raises(sweep.SweepError, match=r"config_file: 'c.py:tiny' there, 'c.py:small' now"):
    sweep.check_same_sweep(str(tmp_path / "r"), {**header, "config_file": "c.py:small"})
  with pytest.raises(ValueError, match=r"base_overrides: \{'margin': 0.5, 'model.widths': \[4, 8\]\}"
                                       r" there, \{'model.widths': \(4, 16\)"):
    sweep.check_same_sweep(str(tmp_path / "r"), {**header, "base_overrides": {"model.widths": (4, 16),
                                                                              "margin": 0.5}})


def test_emit_never_replaces_another_sweep_slurm(here):
  """sweep.slurm was rewritten in place (open 'w'), the user's edits lost, exit 0."""
  cmd = ["--config=myconf.py:tiny", "--sweep=seed", "--workdir=root", "--emit=slurm",
         "--slurm_options=--time=1:00:00"]
  _run(cmd, here, 0)
  path = here / "root" / "sweep.slurm"
  first = path.read_text()
  assert "#SBATCH --time=1:00:00" in first
  r = _run(cmd, here, 0)   # the same command again: the same script, left as it is
  assert "unchanged" in r.stdout and path.read_text() == first
  path.write_text(first.replace("--time=1:00:00", "--time=9:00:00\n#SBATCH --mem=64G"))
  edited = path.read_text()
  for again in (cmd, cmd[:-1] + ["--slurm_options=--time=2:00:00"], cmd[:-1]):
    r = _run(again, here)
    assert re.fullmatch(r"error: --emit=slurm: root/sweep.slurm exists and differs from the job "
                        r"script this command writes \(edited, or written for other flags\); "
                        r"remove or rename it to write this one, or submit it as it is", _error(r))
    assert path.read_text() == edited
  path.unlink()
  _run(cmd[:-1], here, 0)   # removed: written anew (through a temporary file, none left over)
  assert "--time" not in path.read_text()
  assert sorted(os.listdir(here / "root")) == ["sweep.slurm"]


def test_emitted_commands_run_from_any_directory(here, tmp_path):
  """The job script cd'd into the repository and kept --config=myconf.py relative, so every
  task failed (No such file or directory); --dry_run printed 'python scripts/sweep.py ...',
  which ran only from the repository. Now the paths are absolute and the commands cd to the
  directory sweep.py ran from (where relative override values mean what they meant)."""
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  base = ["--config=myconf.py:tiny", "--sweep=seed", "--workdir=root", "--config.num_steps=3",
          "--config.model.widths=(4, 8)"]
  lines = _run(base + ["--dry_run"], here, 0).stdout.strip().splitlines()
  assert len(lines) == 3
  for i, line in enumerate(lines):
    assert line.startswith(f"cd {here} && ") and f" {SCRIPT} " in line
    assert f"--config={here}/myconf.py:tiny" in line and f"--workdir={here}/root" in line
    assert line.endswith(f"--index={i}") and "'--config.model.widths=(4, 8)'" in line
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  # a printed command, run elsewhere, is the same sweep (shown with --dry_run: prints itself)
  r = subprocess.run(["bash", "-c", lines[1] + " --dry_run"], cwd=str(elsewhere), env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and r.stdout.strip() == lines[1], r.stderr

  _run(base + ["--emit=slurm"], here, 0)
  script = (here / "root" / "sweep.slurm").read_text().splitlines()
  assert script[-2] == f"cd {here}"
  assert script[-1].startswith(f"srun {sys.executable} {SCRIPT} --config={here}/myconf.py:tiny ")
  assert script[-1].endswith(" --index=$SLURM_ARRAY_TASK_ID")
  task = "\n".join([script[-2], script[-1].removeprefix("srun ") + " --dry_run"])
  r = subprocess.run(["bash", "-c", task], cwd=str(elsewhere), env=dict(env, SLURM_ARRAY_TASK_ID="2"),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and r.stdout.strip() == lines[2], r.stderr


@pytest.mark.parametrize("extra, message", [
    (["--index=1"], r"error: --index=1 --emit=slurm: the job script runs every point, one array "
                    r"task each; drop --index \(or use --dry_run --index=N for one point's command\)"),
    (["--dry_run"], r"error: --dry_run --emit=slurm: give one of them \(--dry_run prints the "
                    r"commands, --emit writes the job script\)"),
])
def test_emit_refuses_flags_it_would_ignore(here, extra, message):
  """--index was ignored by --emit (the job ran every point), and --dry_run won over --emit
  (commands printed, no job script), both exit 0."""
  r = _run(["--config=myconf.py:tiny", "--sweep=seed", "--workdir=root", "--emit=slurm", *extra], here)
  assert re.fullmatch(message, _error(r)) and not r.stdout
  assert not (here / "root").exists()


def test_slurm_options_without_emit_are_refused(here):
  r = _run(["--config=myconf.py:tiny", "--sweep=seed", "--workdir=root", "--dry_run",
            "--slurm_options=--time=1:00:00"], here)
  assert _error(r) == "error: --slurm_options=--time=1:00:00: only used with --emit=slurm"
