"""One FakeOpenAI per deployment, through the real openai SDK: a server that accepts its own
API key only (and refuses it once revoked), that serves Azure OpenAI's URL shape for its
deployments, and that enforces its own limits whatever another server does."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import openai
import pytest

from fleetgate.testing.fake_openai import AzureShape, FakeConfig, FakeOpenAI, ModelLimits

MSG = [{"role": "user", "content": "How do I reset my password?"}]
MODEL = "gpt-4.1-mini"
EMBEDDER = "text-embedding-3-small"
KEY = "sk-deployment-east-0123456789abcdef"
WRONG = "sk-deployment-west-fedcba9876543210"
AZURE = AzureShape(deployments={"support-chat": MODEL, "search-vectors": EMBEDDER})
VERSION = "2024-10-21"
KEYED = FakeConfig(api_key=KEY)
KEYED_AZURE = FakeConfig(api_key=KEY, azure=AZURE)


def client(fake: FakeOpenAI, api_key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key=api_key, max_retries=0)


def azure(fake: FakeOpenAI, api_key: str = KEY, api_version: str = VERSION) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=fake.azure_endpoint, api_key=api_key, api_version=api_version,
                              max_retries=0)


def ask(chat: openai.OpenAI, model: str = MODEL, **headers: str) -> str | None:
    """A chat call's answer; `headers` replace the SDK's ``Authorization`` (none: it is omitted)."""
    extra: dict[str, str | openai.Omit] = {"Authorization": openai.Omit(), **headers} if headers else {}
    return chat.chat.completions.create(model=model, messages=MSG, extra_headers=extra).choices[0].message.content


def said(error: openai.APIStatusError) -> str:
    """The message of an error's body, as the server wrote it (without the SDK's prefix)."""
    assert isinstance(error.body, dict)
    return str(error.body["message"])


# -- the key ----------------------------------------------------------------------------


@pytest.mark.fake_openai(config=KEYED)
def test_the_deployments_key_is_served_in_openais_shape_and_azures(fake_openai: FakeOpenAI) -> None:
    assert ask(client(fake_openai))
    assert ask(client(fake_openai, api_key="unused"), **{"api-key": KEY}), "as Azure's SDK sends it"
    assert fake_openai.counters(MODEL).requests == 2 and fake_openai.counters(MODEL).unauthorized == 0


@pytest.mark.fake_openai(config=KEYED)
def test_another_key_is_refused_as_openai_refuses_it_and_shown_masked(fake_openai: FakeOpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        ask(client(fake_openai, api_key=WRONG))
    refused = caught.value
    assert refused.status_code == 401 and refused.code == "invalid_api_key" and refused.type == "invalid_request_error"
    assert said(refused) == ("Incorrect API key provided: sk-de***210. You can find your API key at "
                               "https://platform.openai.com/account/api-keys.")
    assert WRONG not in str(refused.body) and KEY not in str(refused.body)
    with pytest.raises(openai.AuthenticationError, match=r"provided: sk\*\*\*rt\."):  # a short key: a quarter at each end
        ask(client(fake_openai, api_key="sk-short"))
    counters = fake_openai.counters(MODEL)
    assert counters.unauthorized == 2 and counters.requests == 0, "a refused request never reaches the limits"


@pytest.mark.fake_openai(config=KEYED)
def test_a_request_without_a_key_is_refused(fake_openai: FakeOpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        ask(client(fake_openai, api_key="unused"), **{"api-key": ""})
    assert caught.value.status_code == 401 and caught.value.code is None  # as OpenAI answers it
    assert said(caught.value).startswith("You didn't provide an API key.")
    assert fake_openai.counters(MODEL).unauthorized == 1


@pytest.mark.fake_openai(config=KEYED)
def test_a_refused_request_is_counted_only_for_a_model_its_body_names(fake_openai: FakeOpenAI) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(fake_openai, api_key=WRONG).models.list()
    assert fake_openai.counters(MODEL) == fake_openai.counters("any-model") == fake_openai.counters("")


@pytest.mark.fake_openai(config=KEYED)
def test_a_revoked_key_is_refused_until_it_is_restored(fake_openai: FakeOpenAI) -> None:
    chat = client(fake_openai)
    assert ask(chat)
    fake_openai.revoke_key()
    with pytest.raises(openai.AuthenticationError) as caught:
        ask(chat)
    assert caught.value.code == "invalid_api_key" and KEY not in caught.value.message
    with pytest.raises(openai.AuthenticationError):
        chat.embeddings.create(model=EMBEDDER, input="a")
    with urllib.request.urlopen(f"{fake_openai.azure_endpoint}/fleetgate/counters") as answer:
        assert json.load(answer)[MODEL]["unauthorized"] == 1, "the test's introspection stays open"
    fake_openai.restore_key()
    assert ask(chat)
    assert fake_openai.counters(MODEL).requests == 2 and fake_openai.counters(MODEL).unauthorized == 1


def test_revoking_a_keyless_server_refuses_every_key() -> None:
    with FakeOpenAI() as fake:
        assert ask(client(fake, api_key="sk-anything-at-all"))
        fake.revoke_key()
        with pytest.raises(openai.AuthenticationError):
            ask(client(fake, api_key="sk-anything-at-all"))
        fake.restore_key()
        assert ask(client(fake, api_key="sk-anything-else"))


@pytest.mark.fake_openai(config=KEYED)
def test_the_websocket_handshake_asks_for_the_key_too(fake_openai: FakeOpenAI) -> None:
    refused = openai.OpenAI(base_url=fake_openai.base_url, api_key=WRONG, max_retries=0)
    with pytest.raises(Exception, match="401"), refused.responses.connect() as connection:
        connection.response.create(model=MODEL, input="Hello")
    with client(fake_openai).responses.connect() as connection:
        connection.response.create(model=MODEL, input="Hello")
        assert any(event.type == "response.completed" for event in connection)


# -- Azure's URL shape --------------------------------------------------------------------


@pytest.mark.fake_openai(config=KEYED_AZURE)
def test_azure_deployments_answer_as_the_model_they_serve(fake_openai: FakeOpenAI) -> None:
    resource = azure(fake_openai)
    chat = resource.chat.completions.create(model="support-chat", messages=MSG)
    assert chat.model == MODEL and chat.choices[0].message.content and chat.usage is not None
    vectors = resource.embeddings.create(model="search-vectors", input=["a", "b"])
    assert vectors.model == EMBEDDER and len(vectors.data) == 2
    raw = resource.chat.completions.with_raw_response.create(model="support-chat", messages=MSG)
    assert raw.headers["x-ratelimit-limit-requests"] == "10000", "the model's limits, in the model's headers"
    assert fake_openai.counters(MODEL).requests == 2 and fake_openai.counters(EMBEDDER).requests == 1
    assert fake_openai.counters("support-chat").requests == 0


@pytest.mark.fake_openai(config=KEYED_AZURE)
def test_azure_api_version_is_required_and_must_be_one_it_serves(fake_openai: FakeOpenAI) -> None:
    versionless = openai.OpenAI(base_url=f"{fake_openai.azure_endpoint}/openai/deployments/support-chat",
                                api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        ask(versionless)
    assert missing.value.code == "404" and said(missing.value) == "Resource not found"
    with pytest.raises(openai.BadRequestError, match="2023-01-01") as unsupported:
        ask(azure(fake_openai, api_version="2023-01-01"), model="support-chat")
    assert unsupported.value.code == "BadRequest"
    assert ask(azure(fake_openai, api_version="2025-04-01-preview"), model="support-chat")


@pytest.mark.fake_openai(config=KEYED_AZURE)
def test_an_unknown_azure_deployment_is_not_found(fake_openai: FakeOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        ask(azure(fake_openai), model=MODEL)  # a model's name is not a deployment's
    assert caught.value.code == "DeploymentNotFound"
    assert said(caught.value).startswith("The API deployment for this resource does not exist.")


@pytest.mark.fake_openai(config=KEYED_AZURE)
def test_azure_refuses_another_key_in_its_own_shape(fake_openai: FakeOpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        ask(azure(fake_openai, api_key=WRONG), model="support-chat")
    assert caught.value.code == "401" and "invalid subscription key" in caught.value.message
    assert WRONG[3:] not in str(caught.value.body)
    assert fake_openai.counters(MODEL).unauthorized == 1, "counted for the deployment's model"


@pytest.mark.fake_openai(config=KEYED_AZURE)
def test_async_clients_of_both_shapes(fake_openai: FakeOpenAI) -> None:
    async def main() -> tuple[str, str | None]:
        resource = openai.AsyncAzureOpenAI(azure_endpoint=fake_openai.azure_endpoint, api_key=KEY,
                                           api_version=VERSION, max_retries=0)
        chat = await resource.chat.completions.create(model="support-chat", messages=MSG)
        wrong = openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key=WRONG, max_retries=0)
        try:
            await wrong.chat.completions.create(model=MODEL, messages=MSG)
        except openai.AuthenticationError as refused:
            return chat.model, refused.code
        return chat.model, None

    assert asyncio.run(main()) == (MODEL, "invalid_api_key")


# -- several deployments ----------------------------------------------------------------------


def test_each_deployment_enforces_its_own_limits() -> None:
    """One request a minute on one deployment (so its second is refused however slow the
    machine), ten a second on the other: the first refusal tells nothing to the second."""
    tight = FakeConfig(api_key="sk-tight-deployment-key", models={MODEL: ModelLimits(requests_per_minute=1)})
    roomy = FakeConfig(api_key="sk-roomy-deployment-key", models={MODEL: ModelLimits(requests_per_minute=600)})
    with FakeOpenAI(tight) as east, FakeOpenAI(roomy) as west:
        to_east, to_west = client(east, "sk-tight-deployment-key"), client(west, "sk-roomy-deployment-key")
        assert ask(to_east) and ask(to_west)
        with pytest.raises(openai.RateLimitError):
            ask(to_east)
        answer = to_west.chat.completions.with_raw_response.create(model=MODEL, messages=MSG)
        assert answer.headers["x-ratelimit-limit-requests"] == "600"
        with pytest.raises(openai.AuthenticationError):
            ask(client(west, "sk-tight-deployment-key"))
        assert (east.counters(MODEL).rate_limited, west.counters(MODEL).rate_limited) == (1, 0)
        assert (east.counters(MODEL).requests, west.counters(MODEL).requests) == (2, 2)
