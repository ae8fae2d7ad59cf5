"""The `aurora` command: installed as a console script, it lists every job, runs each job's own command line, and
keeps the commands' promise: bad input is one `error:` line, never a traceback."""
import importlib.metadata, subprocess, sys
import pytest
from aurora_tg.cli import main as aurora
from aurora_tg.cli.errors import run
from aurora_tg import UserError
from conftest import run_main
from test_train import assert_one_line_error


def test_the_install_gives_an_aurora_command():
  scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
  assert scripts.get("aurora") == "aurora_tg.cli.main:main"


def test_help_lists_every_job_and_each_job_has_its_own_help():
  proc = subprocess.run([sys.executable, "-m", "aurora_tg.cli.main", "--help"], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0
  for job in ("train", "chat", "serve", "prepare", "eval", "export", "plot"): assert f"  {job} " in proc.stdout
  for job in aurora.JOBS:
    proc = run_main(aurora.main, [job, "--help"])
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: aurora {job}"), (job, proc.stdout[:200], proc.stderr)
  serve = run_main(aurora.main, ["serve", "--help"]).stdout
  assert "--slots" in serve and "--prompt" not in serve


def test_an_unknown_job_is_refused():
  proc = run_main(aurora.main, ["trian"])
  assert proc.returncode == 2 and "error: unknown job 'trian'" in proc.stderr


def test_input_nested_too_deeply_is_one_error_line(tmp_path):
  """A JSON line nested 100,000 levels deep: Python's parser recurses, and the failure names the line."""
  data = tmp_path / "deep.jsonl"
  data.write_text('{"text": "fine"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
  assert_one_line_error(run_main(aurora.main, ["prepare", data, "--out", tmp_path / "out", "--workers", "1"]), "deep.jsonl:2: JSON nested too deeply")


@pytest.mark.parametrize("raised, expected", [(UserError("bad flag"), (2, "error: bad flag")),
                                              (RecursionError(), (2, "error: the input is nested too deeply to read")),
                                              (KeyboardInterrupt(), (130, "stopped"))])
def test_the_shared_wrapper_turns_each_failure_into_one_line(raised, expected, capsys):
  def work():
    raise raised
  code = run(work, interrupted="stopped")
  assert (code, capsys.readouterr().err.strip()) == expected
