"""slimkit.train.launch.restart_resume: what a worker that torchrun restarted does with the run's files."""
from slimkit.train import launch


def test_restarted_worker_without_a_checkpoint_starts_over(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    settings = {}
    launch.restart_resume(settings, str(tmp_path))
    assert settings == {"overwrite": True}  # the failed attempt's own files are replaced


def test_first_attempt_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    settings = {}
    launch.restart_resume(settings, str(tmp_path))
    assert settings == {}
