"""Settings: sources, precedence, validation, and what real editors send."""

from __future__ import annotations

import pytest

from phi_lsp.core import settings as config
from phi_lsp.core.settings import SettingsManager


def test_defaults():
    s = config.Settings()
    assert s.backend.url is None and s.backend.kind == "vllm"
    assert s.completion.model == s.review.model == "microsoft/Phi-4-mini-instruct"
    assert s.completion.prompt_mode == "auto"


def test_precedence_lowest_to_highest():
    m = SettingsManager()
    m.set_source("pyproject.toml", {"backend": {"url": "http://a/v1"}, "completion": {"debounceMs": 10, "maxTokens": 5}})
    m.set_source("environment", config.from_environment({"PHI_LSP_BACKEND_URL": "http://b/v1", "PHI_LSP_MODEL": "m-env"}))
    m.set_source("initializationOptions", {"completion": {"debounceMs": 20}})
    m.set_source("workspace/didChangeConfiguration", {"completion.debounceMs": 30})
    s = m.settings
    assert s.backend.url == "http://b/v1"
    assert s.completion.model == s.review.model == "m-env"
    assert s.completion.debounce_ms == 30
    assert s.completion.max_tokens == 5
    assert m.origins()["completion.debounceMs"] == "workspace/didChangeConfiguration"
    # A later change of a lower source is still overridden by the higher ones.
    m.set_source("pyproject.toml", {"completion": {"debounceMs": 99}})
    assert m.settings.completion.debounce_ms == 30
    assert m.settings.completion.max_tokens == 64  # pyproject no longer sets it


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"completion": {"debounceMs": "fast"}}, "must be a number"),
        ({"completion": {"debounceMs": -5}}, "between 0 and 5000"),
        ({"completion": {"minConfidence": 1.5}}, "between 0.0 and 1.0"),
        ({"completion": {"enabled": "yes"}}, "true or false"),
        ({"backend": {"kind": "ollama"}}, "one of 'vllm', 'openai'"),
        ({"backend": {"url": "localhost:8000"}}, "http:// or https://"),
        ({"completion": {"maxTokens": 2.5}}, "whole number"),
        ({"completion": {"maxTokens": 10**400}}, "between 1 and"),  # too large for a float
        ({"routing": {"reviewMinConfidence": 10**400}}, "between 0.0 and 1.0"),
        ({"completion": {"nope": 1}}, "Unknown phi-lsp setting `completion.nope`"),
        ({"bogus": {}}, "Unknown phi-lsp setting `bogus`"),
    ],
)
def test_bad_values_are_reported_and_fall_back(raw, words):
    m = SettingsManager()
    m.set_source("initializationOptions", {"completion": {"debounceMs": 42}})
    problems = m.set_source("workspace/didChangeConfiguration", raw)
    assert len(problems) == 1 and words in problems[0], problems
    assert m.settings.completion.debounce_ms == 42
    assert m.settings.backend.kind == "vllm"


def test_api_key_never_appears_in_messages_or_repr():
    m = SettingsManager()
    problems = m.set_source("initializationOptions", {"backend": {"apiKey": 12345}})
    assert "12345" not in problems[0]
    m.set_source("initializationOptions", {"backend": {"apiKey": "sk-secret-value"}})
    assert "sk-secret-value" not in repr(m.settings)
    assert "sk-secret-value" not in str(config.redacted(m.settings))
    # A bad endpoint list is not echoed either: its entries carry keys.
    problems = m.set_source("initializationOptions", {"backend": {"endpoints": [{"url": "nope", "apiKey": "sk-endpoint"}]}})
    assert problems and "sk-endpoint" not in problems[0]


def test_vscode_and_neovim_payloads():
    # VS Code: getConfiguration("phiLsp") nests dotted keys; some clients wrap in the section.
    vscode = {"phiLsp": {"backend": {"url": "http://h:8000/v1", "kind": "vllm", "apiKey": None},
                         "completion": {"enabled": True, "debounceMs": 75, "promptMode": "auto"}}}
    m = SettingsManager()
    assert m.set_source("initializationOptions", config.unwrap_client_settings(vscode)) == []
    assert m.settings.backend.url == "http://h:8000/v1"
    # Neovim: settings table as given to setup({ settings = {...} }).
    nvim = {"backend": {"url": "http://127.0.0.1:8000/v1"}, "review": {"onSave": False, "maxFindingsPerFile": 5}}
    assert m.set_source("initializationOptions", nvim) == []
    assert m.settings.review.on_save is False and m.settings.review.max_findings_per_file == 5


def test_pyproject_table(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.phi-lsp]\nbackend.url = "http://x:1/v1"\n[tool.phi-lsp.completion]\nmaxTokens = 12\n'
    )
    (tmp_path / "src").mkdir()
    manager = SettingsManager()
    problems = config.load_settings(
        manager, tmp_path / "src", flags=config.from_flags(None, "flag-model"), env={}, workspace_trusted=True
    )
    assert problems == []
    assert manager.settings.backend.url == "http://x:1/v1"
    assert manager.settings.completion.max_tokens == 12
    assert manager.settings.review.model == "flag-model"


def test_broken_pyproject_is_one_message(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.phi-lsp\n")
    manager = SettingsManager()
    problems = config.load_settings(manager, tmp_path, env={})
    assert len(problems) == 1 and "Could not read" in problems[0]
    assert manager.settings == config.Settings()


def test_endpoints():
    m = SettingsManager()
    problems = m.set_source("initializationOptions", {"backend": {"endpoints": [
        {"url": "http://a:1/v1", "models": ["small"]}, {"url": "http://b:2/v1", "models": "large", "apiKey": "k"}]}})
    assert problems == []
    assert [e.url for e in m.settings.backend.endpoints] == ["http://a:1/v1", "http://b:2/v1"]
    assert m.settings.backend.endpoints[1].models == ("large",)
    assert m.set_source("initializationOptions", {"backend": {"endpoints": [{"models": []}]}})


# -- workspace trust --------------------------------------------------------------------------

EVIL_PYPROJECT = """
[tool.phi-lsp]
backend.url = "http://attacker.example:8000/v1"
backend.apiKey = "stolen"
managed.python = "./evil.sh"
managed.extraArgs = ["--evil"]
completion.maxTokens = 12
"""


def test_untrusted_workspace_cannot_choose_the_backend_or_run_a_program(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "pyproject.toml").write_text(EVIL_PYPROJECT)
    manager = SettingsManager()
    problems = config.load_settings(manager, tmp_path / "repo", env={})
    s = manager.settings
    assert s.backend.url is None and s.backend.api_key is None
    assert s.managed.python is None and s.managed.extra_args == ()
    assert s.completion.max_tokens == 12  # harmless keys still apply
    assert manager.untrusted_keys() == ["backend.url", "backend.apiKey", "managed.python", "managed.extraArgs"]
    assert len(problems) == 1
    assert "not trusted" in problems[0] and "backend.url" in problems[0] and "phi-lsp trust" in problems[0]
    assert "stolen" not in problems[0]


def test_trusted_workspace_and_the_editors_word(tmp_path, monkeypatch):
    from phi_lsp.core import trust

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(EVIL_PYPROJECT)
    trust.set_trusted(repo)
    assert oct(trust.trust_file().stat().st_mode & 0o777) == "0o600"
    manager = SettingsManager()
    assert config.load_settings(manager, repo / "sub", env={}) == []
    assert manager.settings.managed.python == "./evil.sh"
    # The editor's word wins over the store, both ways.
    manager = SettingsManager()
    config.load_settings(manager, repo, env={}, workspace_trusted=False)
    assert manager.settings.backend.url is None
    trust.set_trusted(repo, False)
    manager = SettingsManager()
    config.load_settings(manager, repo, env={}, workspace_trusted=True)
    assert manager.settings.backend.url == "http://attacker.example:8000/v1"
    assert not trust.is_trusted(repo)


def test_a_link_to_a_trusted_folder_is_judged_by_its_target(tmp_path, monkeypatch):
    from phi_lsp.core import trust

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "theirs").mkdir()
    trust.set_trusted(tmp_path / "mine")
    (tmp_path / "link").symlink_to(tmp_path / "mine")
    assert trust.is_trusted(tmp_path / "link")
    assert not trust.is_trusted(tmp_path / "theirs")
    assert not trust.is_trusted(tmp_path)  # trusting a folder trusts what is below, not above


def test_editor_trust_travels_beside_the_settings():
    assert config.split_client_options({"workspaceTrusted": True, "phiLsp": {"backend": {"url": "http://a/v1"}}}) == (
        {"backend": {"url": "http://a/v1"}}, True)
    assert config.split_client_options({"backend": {"kind": "openai"}, "workspaceTrusted": False}) == (
        {"backend": {"kind": "openai"}}, False)
    assert config.split_client_options({"workspaceTrusted": "yes"}) == ({}, None)
    assert config.split_client_options(None) == (None, None)


# -- precedence: every source, the same for the server and the command line -------------------

PRECEDENCE_KEYS = ("completion.maxTokens", "completion.debounceMs", "review.maxFindingsPerFile", "backend.url",
                   "backend.kind", "backend.apiKey")


def test_precedence_of_file_environment_and_flags(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.phi-lsp]\ncompletion.maxTokens = 11\ncompletion.debounceMs = 11\nbackend.kind = "openai"\n'
    )
    config_file = tmp_path / "user.toml"
    config_file.write_text(
        'backend.url = "http://file:1/v1"\nbackend.kind = "openai"\nbackend.apiKey = "file-key"\n'
        "completion.maxTokens = 22\n"
    )
    env = {"PHI_LSP_BACKEND_URL": "http://env:2/v1", "PHI_LSP_MODEL": "env-model"}
    flags = config.from_flags("http://flag:3/v1", None)
    # --config takes the place of the workspace's pyproject.toml; env beats it; flags beat env;
    # the merge is key by key (backend.kind and backend.apiKey survive a flag's backend.url).
    manager = SettingsManager()
    assert config.load_settings(manager, tmp_path, config_file=config_file, flags=flags, env=env) == []
    s = manager.settings
    assert (s.backend.url, s.backend.kind, s.backend.api_key) == ("http://flag:3/v1", "openai", "file-key")
    assert s.completion.max_tokens == 22 and s.completion.debounce_ms == 60  # pyproject not read
    assert s.completion.model == "env-model"
    origins = manager.origins()
    assert origins["backend.url"] == "command line" and origins["backend.apiKey"] == "--config"
    assert origins["completion.model"] == "environment"


def test_an_untrusted_workspace_cannot_raise_the_limits(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "pyproject.toml").write_text("[tool.phi-lsp]\nlimits.maxDocumentBytes = 1000000000\n")
    manager = SettingsManager()
    config.load_settings(manager, tmp_path, env={})
    assert manager.untrusted_keys() == ["limits.maxDocumentBytes"]
    assert manager.settings.limits.max_document_bytes == config.LimitsSettings().max_document_bytes
