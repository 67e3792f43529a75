"""Errors that explain themselves: a config that does not load is one ConfigError naming
where each bad value came from, its key and what it should be, without ever repeating a
value; every fleetgate exception says what went wrong and what to do, also when the
gateway's SDK clients raise it again from a refusal."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import pickle
import pkgutil
import socket
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, field_validator

import fleetgate as fg
import fleetgate.config
import fleetgate.path.refusals
from fleetgate.batch import BatchInputError, JobBusy, ResultsExpired
from fleetgate.budget.reconcile import ReconcileError
from fleetgate.cli import main as cli
from fleetgate.config import GatewayConfig
from fleetgate.errors import REFUSAL_CODES
from fleetgate.testing.fake_openai import FakeOpenAI
from fleetgate.validate import accumulate
from fleetgate.webhooks import WebhookRejected
from tests.test_batch import jobs_for, write_input

MODEL = "gpt-4.1-mini"
MSG = [{"role": "user", "content": "How do I reset my password?"}]
MARKER = "hunter2-MARKER-7f3a"


# -- config errors ------------------------------------------------------------------------------

def test_every_config_model_hides_its_input_in_errors() -> None:
    models = []
    for info in pkgutil.iter_modules(fleetgate.config.__path__):
        module = importlib.import_module(f"fleetgate.config.{info.name}")
        models += [v for v in vars(module).values()
                   if isinstance(v, type) and issubclass(v, BaseModel) and v.__module__ == module.__name__]
    assert GatewayConfig in models and len(models) > 20
    for model in models:
        assert model.model_config.get("hide_input_in_errors") is True, f"{model.__name__} would echo input"


def test_a_bad_file_names_the_file_each_key_in_toml_terms_and_what_it_should_be(tmp_path: Path) -> None:
    path = tmp_path / "fleetgate.toml"
    path.write_text('max_upstream_retries = -1\nredis_ulr = "redis://127.0.0.1:6379"\n'
                    '[[budgets.limits]]\ndollars = 0\n[breakers]\nwindw = 5\n'
                    '[cache.semantic]\nthreshold = 2\n[models."gpt-4.1"]\nrequests_per_minute = "many"\n')
    for load in (lambda: GatewayConfig.from_toml(path), lambda: fg.Gateway.from_config(path)):
        with pytest.raises(fg.ConfigError) as raised:
            load()
        error = raised.value
        assert isinstance(error, ValueError)
        assert set(error.problems) == {
            fg.ConfigProblem(str(path), "max_upstream_retries", "should be greater than or equal to 0"),
            fg.ConfigProblem(str(path), "redis_ulr", "unknown key; did you mean `redis_url`?"),
            fg.ConfigProblem(str(path), "budgets.limits[0].dollars", "should be greater than 0"),
            fg.ConfigProblem(str(path), "[breakers] windw", "unknown key; did you mean `window`?"),
            fg.ConfigProblem(str(path), "[cache.semantic] threshold", "should be less than or equal to 1"),
            fg.ConfigProblem(str(path), '[models."gpt-4.1"] requests_per_minute',
                             "should be a valid integer, unable to parse string as an integer"),
        }
        lines = str(error).splitlines()
        assert lines[0] == "fleetgate config: 6 problems"
        assert sorted(lines[1:]) == sorted(f"  {p.where}: {p.key}: {p.message}" for p in error.problems)
        assert "GatewayConfig" not in str(error) and "pydantic" not in str(error)
        assert error.__cause__ is None and error.__context__ is None


def test_a_key_unlike_any_lists_the_keys_there(tmp_path: Path) -> None:
    path = tmp_path / "fleetgate.toml"
    path.write_text("[dedup]\nzzz = 1\n")
    with pytest.raises(fg.ConfigError, match=r"\[dedup\] zzz: unknown key; the keys here are: enabled, when, "):
        GatewayConfig.from_toml(path)


def test_variables_and_arguments_are_named_as_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fleetgate.toml"
    path.write_text("local_share = 0.5\n[breakers]\nwindow = 10\n")
    monkeypatch.setenv("FLEETGATE_LOCAL_SHARE", "5")
    monkeypatch.setenv("FLEETGATE_BREAKERS__WINDW", "3")
    with pytest.raises(fg.ConfigError) as raised:
        GatewayConfig.from_toml(path, model_headroom=0.9)
    assert set(raised.value.problems) == {
        fg.ConfigProblem("FLEETGATE_LOCAL_SHARE", "local_share", "should be less than or equal to 1"),
        fg.ConfigProblem("FLEETGATE_BREAKERS__WINDW", "[breakers] windw",
                         "unknown key; did you mean `FLEETGATE_BREAKERS__WINDOW`?"),
        fg.ConfigProblem("argument", "model_headroom", "should be less than 0.5"),
    }
    monkeypatch.delenv("FLEETGATE_LOCAL_SHARE")
    monkeypatch.delenv("FLEETGATE_BREAKERS__WINDW")
    with pytest.raises(fg.ConfigError) as raised:
        fg.Gateway(local_share=2, cache={"semantc": {}})
    assert str(raised.value) == ("fleetgate config: 2 problems\n"
                                 "  argument: local_share: should be less than or equal to 1\n"
                                 "  argument: [cache] semantc: unknown key; did you mean `semantic`?")


def test_a_variable_that_nearly_names_a_setting_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETGATE_REDIS_ULR", "redis://127.0.0.1:6379")
    with pytest.raises(fg.ConfigError) as raised:
        GatewayConfig()
    assert str(raised.value) == ("fleetgate config: FLEETGATE_REDIS_ULR: not a fleetgate setting; did you mean "
                                 "`FLEETGATE_REDIS_URL`?")
    monkeypatch.delenv("FLEETGATE_REDIS_ULR")
    monkeypatch.setenv("FLEETGATE_EMBEDDING_MODEL", "/models/minilm.onnx")  # fleetgate's own, not a setting
    monkeypatch.setenv("FLEETGATE_SOMETHING_ELSE", "x")  # like no setting at all: not ours to judge
    assert GatewayConfig().redis_url is None


def test_a_variable_that_is_not_json_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETGATE_BREAKERS", "{window: 5")
    with pytest.raises(fg.ConfigError, match=r"^fleetgate config: FLEETGATE_BREAKERS: breakers: cannot be parsed: "
                                             r"a table or array set in a variable is JSON"):
        GatewayConfig()


def test_a_missing_file_and_bad_toml_are_config_errors_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(fg.ConfigError, match=f"^fleetgate config: {missing}: no such file: check the path"):
        GatewayConfig.from_toml(missing)
    broken = tmp_path / "broken.toml"
    broken.write_text("[cache]\nenabled = \n")
    with pytest.raises(fg.ConfigError) as raised:
        fg.Gateway.from_config(broken)
    assert raised.value.problems == (fg.ConfigProblem(str(broken), "", "not valid TOML: Invalid value (at line 2, "
                                                                      "column 11); fix the syntax there"),)
    with pytest.raises(fg.ConfigError, match="not a file"):
        GatewayConfig.from_toml(tmp_path)


def _chain_text(error: BaseException) -> str:
    """Everything a log could show of `error`: its traceback with every cause and context."""
    seen = [str(error), repr(error), repr(error.args), *map(str, getattr(error, "problems", ()))]
    seen += traceback.format_exception(error)
    link: BaseException | None = error
    while link is not None:
        seen += [str(link), repr(link)]
        link = link.__cause__ or link.__context__
    return "\n".join(seen)


@pytest.mark.parametrize("written", [
    f'redis_ulr = "redis://:{MARKER}@127.0.0.1:6379"\n',  # a mistyped key
    f'redis_url = ["redis://:{MARKER}@127.0.0.1:6379"]\n',  # the right key, the wrong type
    f'[cache.semantic]\nembedder = "{MARKER}"\n',  # a value that fails its pattern
])
def test_no_config_error_repeats_a_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: str) -> None:
    path = tmp_path / "fleetgate.toml"
    path.write_text(written)
    with pytest.raises(fg.ConfigError) as in_file:
        fg.Gateway.from_config(path)
    assert in_file.value.problems and MARKER not in _chain_text(in_file.value)
    result = CliRunner().invoke(cli, ["check", "--config", str(path)],
                                env={"OPENAI_API_KEY": "sk-fake", "FLEETGATE_ENV": None, "FLEETGATE_REDIS_URL": None})
    assert result.exit_code == 1 and "FAIL  config:" in result.output
    assert MARKER not in result.output


@pytest.mark.parametrize("name", ["FLEETGATE_REDIS_ULR", "FLEETGATE_BREAKERS__REDIS_URL", "FLEETGATE_LOCAL_SHARE",
                                  "FLEETGATE_BREAKERS"])
def test_no_config_error_repeats_a_variables_value(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, f"redis://:{MARKER}@127.0.0.1:6379")
    with pytest.raises(fg.ConfigError) as raised:
        GatewayConfig()
    assert raised.value.problems[0].where == name
    assert MARKER not in _chain_text(raised.value)
    result = CliRunner().invoke(cli, ["check"], env={"OPENAI_API_KEY": "sk-fake", "FLEETGATE_ENV": None,
                                                     "FLEETGATE_REDIS_URL": None, name: f"redis://:{MARKER}@h:1"})
    assert result.exit_code == 1 and f"FAIL  config: {name}" in result.output
    assert MARKER not in result.output


# -- every error says what to do, as the path raised it -------------------------------------------

def tree() -> set[type[fg.FleetgateError]]:
    """Every fleetgate exception class (the SDK clients' twins of refusals aside), every
    module imported first: what other tests happened to import does not change the tree."""
    for info in pkgutil.walk_packages(fleetgate.__path__, "fleetgate."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    found: set[type[fg.FleetgateError]] = set()
    todo: list[type[fg.FleetgateError]] = [fg.FleetgateError]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("fleetgate") and not issubclass(cls, openai.APIError):
            found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


def _dead_redis_url() -> str:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{s.getsockname()[1]}"


class Case:
    """How to make the request path raise one error: a gateway, what to do to it first,
    the request's scope and model, and words of the advice its message must give."""

    def __init__(self, hint: str, settings: dict[str, Any] | Callable[[], dict[str, Any]],
                 prepare: Callable[[fg.Gateway], Any] = lambda g: None,
                 scope: dict[str, Any] | None = None, model: str = MODEL) -> None:
        self.hint, self.settings, self.prepare = hint, settings, prepare
        self.scope, self.model = scope or {}, model


#: Every error a refusal carries, and how the request path is made to raise it.
THROUGH_THE_PATH: dict[type[fg.FleetgateError], Case] = {
    fg.BudgetExceeded: Case("raise its limit", {"budgets": {"limits": [{"dollars": 1e-9}]}}),
    fg.RateLimited: Case("retry", {"models": {MODEL: fg.QuotaLimits(requests_per_minute=1)}},
                         lambda g: g.limiter.try_acquire([g.quotas_for(MODEL, fg.Scope())[0]]),
                         scope={"deadline": 1.0}),  # the next request in a minute
    fg.CircuitOpen: Case("reset it", {}, lambda g: g.breaker_for("/chat/completions", MODEL).isolate()),
    fg.QueueFull: Case("raise queue_limit", {"lanes": {"concurrency": 1, "queue_limit": 0}},
                       lambda g: g.lanes_for(MODEL).enter(1)),
    fg.DeadlineExpired: Case("later deadline", {"lanes": {"concurrency": 1, "queue_limit": 5}},
                             lambda g: g.lanes_for(MODEL).enter(1), scope={"deadline": 0.05}),
    fg.ServiceDegraded: Case("`fleetgate mode clear` ends it", {}, lambda g: g.modes.set("static")),
    fg.StoreUnavailable: Case("check that Redis is reachable",
                              lambda: {"redis_url": _dead_redis_url(), "failure_policy": "fail_closed",
                                       "models": {MODEL: fg.QuotaLimits(requests_per_minute=6_000)}}),
    fg.ConfigError: Case('unpriced = "allow"', {"budgets": {"limits": [{"dollars": 5}]}}, model="model-with-no-price"),
}


class _NeverValid(BaseModel):
    answer: str

    @field_validator("answer")
    @classmethod
    def _never(cls, value: str) -> str:
        raise ValueError("this model accepts no answer")


def _structured(fake: FakeOpenAI) -> fg.FleetgateError:
    with pytest.raises(fg.StructuredOutputError) as raised:
        gate = fg.Gateway(base_url=fake.base_url)
        gate.complete("Answer", _NeverValid, model=MODEL, retries=0, client=gate.openai(api_key="sk-fake"))
    return raised.value


def _partial(fake: FakeOpenAI) -> fg.FleetgateError:
    with pytest.raises(fg.PartialResponseError) as raised:
        accumulate(iter([]))
    return raised.value


def _batch_input(fake: FakeOpenAI) -> fg.FleetgateError:
    with tempfile.TemporaryDirectory() as tmp, pytest.raises(BatchInputError) as raised:
        jobs = jobs_for(fake, Path(tmp))
        jobs.submit(write_input(Path(tmp) / "in.jsonl", 2, extra=["{not json"]))
    return raised.value


def _job_busy(fake: FakeOpenAI) -> fg.FleetgateError:
    with tempfile.TemporaryDirectory() as tmp, pytest.raises(JobBusy) as raised:
        jobs = jobs_for(fake, Path(tmp))
        jobs.submit(write_input(Path(tmp) / "in.jsonl", 2), name="busy", wait=False)
        assert jobs.store.take_lease("busy", "another-pod", 30) is None
        jobs.watch("busy")
    return raised.value


def _results_expired(fake: FakeOpenAI) -> fg.FleetgateError:
    with tempfile.TemporaryDirectory() as tmp, pytest.raises(ResultsExpired) as raised:
        list(jobs_for(fake, Path(tmp))._file_lines("file-gone"))
    return raised.value


def _reconcile_refused(fake: FakeOpenAI) -> fg.FleetgateError:
    project_key = openai.OpenAI(base_url=fake.base_url, admin_api_key="sk-proj-abc", max_retries=0)
    with fg.Gateway(base_url=fake.base_url) as gate, pytest.raises(ReconcileError) as raised:
        gate.reconcile(dt.date.today(), client=project_key)
    return raised.value


def _webhook_rejected(fake: FakeOpenAI) -> fg.FleetgateError:
    gate = fg.Gateway(base_url=fake.base_url)
    body = b'{"id":"evt_1","object":"event","type":"response.completed","created_at":1,"data":{"id":"resp_1"}}'
    with pytest.raises(WebhookRejected) as raised:
        gate.webhooks(secret="whsec_c2VjcmV0").handle(body, {"webhook-id": "evt_1", "webhook-timestamp": "1",
                                                           "webhook-signature": "v1,bm90LWl0"})
    gate.close()
    return raised.value


#: The rest, made at their raise sites, with words of the advice each must give.
ELSEWHERE: dict[type[fg.FleetgateError], tuple[Callable[[FakeOpenAI], fg.FleetgateError], str]] = {
    fg.StructuredOutputError: (_structured, "allow more retries"),
    fg.PartialResponseError: (_partial, "retry the request"),
    BatchInputError: (_batch_input, "skip_bad_lines=True"),
    JobBusy: (_job_busy, "wait_for_lease"),
    ResultsExpired: (_results_expired, "submit"),
    ReconcileError: (_reconcile_refused, "OPENAI_ADMIN_KEY"),
    WebhookRejected: (_webhook_rejected, "answer it with 400"),
}


def test_every_exception_is_covered() -> None:
    assert set(THROUGH_THE_PATH) == set(REFUSAL_CODES), "each refusal is provoked through the path"
    assert tree() == set(THROUGH_THE_PATH) | set(ELSEWHERE) | {fg.FleetgateError}, (
        "a new exception needs a case here")
    assert str(fg.FleetgateError()) and str(fg.StoreUnavailable()) and str(fg.ConfigError()), "never empty"


def test_a_config_error_keeps_its_problems_when_pickled() -> None:
    error = fg.ConfigError(problems=[fg.ConfigProblem("argument", "local_share", "should be less than or equal to 1")])
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), str(again), again.problems) == (fg.ConfigError, str(error), error.problems)


@pytest.fixture
def raised_by_the_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[fg.FleetgateError]]:
    """The errors the request path turned into refusals."""
    seen: list[fg.FleetgateError] = []
    refusal = fleetgate.path.refusals.refusal

    def spy(request: Any, error: fg.FleetgateError) -> Any:
        seen.append(error)
        return refusal(request, error)

    monkeypatch.setattr(fleetgate.path.refusals, "refusal", spy)
    yield seen


@pytest.mark.parametrize("cls", sorted(THROUGH_THE_PATH, key=lambda c: c.__name__), ids=lambda c: c.__name__)
@pytest.mark.parametrize("asyncio_client", [False, True], ids=["sync", "async"])
def test_a_refusal_raises_what_the_path_raised_with_advice(
        fake_openai: FakeOpenAI, raised_by_the_path: list[fg.FleetgateError], cls: type[fg.FleetgateError],
        asyncio_client: bool) -> None:
    case = THROUGH_THE_PATH[cls]
    settings = case.settings() if callable(case.settings) else case.settings
    gate = fg.Gateway(base_url=fake_openai.base_url, **settings)
    try:
        held = case.prepare(gate)
        with pytest.raises(cls) as raised:
            if asyncio_client:
                client = gate.async_openai(api_key="sk-fake")

                async def calls() -> None:
                    with gate.scope(**case.scope):
                        await client.chat.completions.create(model=case.model, messages=MSG, max_tokens=16)

                asyncio.run(calls())
            else:
                with gate.scope(**case.scope):
                    gate.openai(api_key="sk-fake").chat.completions.create(model=case.model, messages=MSG,
                                                                           max_tokens=16)
        del held
    finally:
        gate.close()
    error = raised.value
    assert isinstance(error, openai.APIStatusError), "the SDK's error for that status too"
    (path_error,) = raised_by_the_path
    assert type(path_error) is cls
    assert str(error) and str(error) == str(path_error), "word for word what the path raised"
    assert error.args == (str(error),) and error.message == str(error)
    assert case.hint in str(error), f"{cls.__name__} says what to do: {error}"


@pytest.mark.parametrize("cls", sorted(ELSEWHERE, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_the_other_errors_say_what_to_do(fake_openai: FakeOpenAI, cls: type[fg.FleetgateError]) -> None:
    make, hint = ELSEWHERE[cls]
    error = make(fake_openai)
    assert type(error) is cls and error.args == (str(error),)
    assert hint in str(error), f"{cls.__name__} says what to do: {error}"


def test_overrides_of_a_config_are_checked_too() -> None:
    config = GatewayConfig(local_share=0.3)
    gate = fg.Gateway(config, max_upstream_retries=5)
    assert (gate.config.local_share, gate.config.max_upstream_retries) == (0.3, 5)
    gate.close()
    with pytest.raises(fg.ConfigError) as raised:
        fg.Gateway(config, redis_ulr="redis://127.0.0.1:6379")
    assert str(raised.value) == "fleetgate config: argument: redis_ulr: unknown key; did you mean `redis_url`?"


def test_a_validator_that_quotes_its_input_is_not_repeated() -> None:
    from fleetgate.config import loader

    error = {"type": "value_error", "loc": ("redis_url",), "input": f"redis://:{MARKER}@h:1",
             "msg": f"Value error, cannot use redis://:{MARKER}@h:1"}
    problem = loader._problem(GatewayConfig, error, [])
    assert problem == fg.ConfigProblem("defaults", "redis_url", "is not valid (value_error)")


def test_a_command_given_a_bad_config_says_its_problems_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "fleetgate.toml"
    path.write_text('redis_url = "redis://127.0.0.1:1"\n[cache.semantic]\nthreshhold = 0.5\n')
    result = CliRunner().invoke(cli, ["mode", "show", "--config", str(path)])
    assert result.exit_code == 1 and not isinstance(result.exception, fg.ConfigError)
    assert result.output == (f"Error: fleetgate config: {path}: [cache.semantic] threshhold: unknown key; "
                             "did you mean `threshold`?\n")
