"""The env server through the real client over WebSocket (real Chromium, MiniWoB pages from the package)."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request

import pytest
from openenv.core.generic_client import GenericEnvClient

from browserrl.env import BrowserGymAction, BrowserGymEnv, EnvServerRefused, LocalEnvServer
from tests.env.conftest import browser_count, find_bid, run, solve_click_test, wait_until

pytestmark = pytest.mark.browser


def test_click_test_solved_with_bid_from_axtree(server: LocalEnvServer) -> None:
    async def go() -> None:
        async with BrowserGymEnv(base_url=server.url) as env:
            first = await env.reset(seed=3, task_name="click-test")
            obs = first.observation
            assert obs.goal == "Click the button."
            assert obs.url.endswith("click-test.html") and obs.text == obs.axtree_txt
            assert not first.done and obs.metadata["step"] == 0 and obs.metadata["seed"] == 3
            assert obs.screenshot is None and obs.pruned_html == ""
            result = await solve_click_test(env, seed=3)
            assert result.reward == 1.0 and result.done
            meta = result.observation.metadata
            assert meta["raw_reward"] > 0 and meta["step"] == 1 and meta["truncated"] is False
            assert meta["task_name"] == "click-test" and not result.observation.last_action_error
            state = await env.state()
            assert state.done and state.cum_reward == 1.0 and state.step_count == 1 and state.seed == 3
            again = await env.step(BrowserGymAction(action_str="noop()"))
            assert again.done and again.observation.last_action_error and "reset" in again.observation.error

    run(go())


def test_same_seed_same_page(server: LocalEnvServer) -> None:
    async def go() -> None:
        async with BrowserGymEnv(base_url=server.url) as env:
            pages = []
            for seed in (5, 5, 6):
                obs = (await env.reset(seed=seed, task_name="miniwob.click-button")).observation
                pages.append((obs.goal, obs.axtree_txt))
            assert pages[0] == pages[1]
            assert pages[0] != pages[2]

    run(go())


def test_unknown_task_is_a_clear_error(server: LocalEnvServer) -> None:
    async def go() -> None:
        async with BrowserGymEnv(base_url=server.url) as env:
            with pytest.raises(EnvServerRefused, match="no MiniWoB\+\+ task named"):
                await env.reset(seed=0, task_name="no-such-task")

    run(go())


def test_book_flight_accepts_fill_and_click(server: LocalEnvServer) -> None:
    async def go() -> None:
        async with BrowserGymEnv(base_url=server.url) as env:
            obs = (await env.reset(seed=1, task_name="book-flight")).observation
            assert obs.goal.startswith("Book the shortest one-way flight")
            from_bid = find_bid(obs.axtree_txt, "textbox", "From:")
            filled = await env.step(BrowserGymAction(action_str=f"fill('{from_bid}', 'Thorne Bay, AK')"))
            assert not filled.observation.last_action_error, filled.observation.error
            assert "Thorne Bay, AK" in filled.observation.axtree_txt
            date = find_bid(filled.observation.axtree_txt, "textbox", "")
            typed = await env.step(BrowserGymAction(action_str=f"fill('{date}', '10/03/2016')"))
            assert "element is not editable" in typed.observation.error  # read-only: use the date picker
            search = find_bid(filled.observation.axtree_txt, "button", "Search")
            clicked = await env.step(BrowserGymAction(action_str=f"click('{search}')"))
            assert not clicked.observation.last_action_error, clicked.observation.error
            assert clicked.observation.metadata["step"] == 3

    run(go())


def test_failed_action_is_an_error_observation_and_episode_goes_on(server: LocalEnvServer) -> None:
    async def go() -> None:
        async with BrowserGymEnv(base_url=server.url) as env:
            await env.reset(seed=2, task_name="click-test")
            bad = await env.step(BrowserGymAction(action_str="click('99999')"))
            assert bad.observation.last_action_error and "99999" in bad.observation.error
            assert bad.reward == 0 and not bad.done and "Click Me!" in bad.observation.axtree_txt
            bid = find_bid(bad.observation.axtree_txt, "button", "Click Me!")
            good = await env.step(BrowserGymAction(action_str=f"click('{bid}')"))
            assert good.reward == 1.0 and good.done and good.observation.metadata["step"] == 2

    run(go())


def test_truncated_after_max_steps(server: LocalEnvServer) -> None:
    async def go() -> None:
        async with BrowserGymEnv(base_url=server.url) as env:
            await env.reset(seed=4, task_name="click-test")
            results = [await env.step(BrowserGymAction(action_str="noop(0)")) for _ in range(5)]
            assert [r.done for r in results] == [False] * 4 + [True]
            last = results[-1]
            assert last.reward == 0 and last.observation.metadata["truncated"] is True
            assert (await env.state()).truncated

    run(go())


def test_screenshot_only_when_asked(server: LocalEnvServer) -> None:
    async def go() -> None:
        async with BrowserGymEnv(base_url=server.url) as env:
            plain = await env.reset(seed=1, task_name="click-test")
            assert plain.observation.screenshot is None
            shot = await env.step(BrowserGymAction(action_str="noop(0)", metadata={"screenshot": True}))
            png = base64.b64decode(shot.observation.screenshot)
            assert png.startswith(b"\x89PNG") and len(png) < 200_000
            with_reset = await env.reset(seed=1, task_name="click-test", screenshot=True)
            assert base64.b64decode(with_reset.observation.screenshot).startswith(b"\x89PNG")

    run(go())


def test_observation_delay_per_episode(server: LocalEnvServer) -> None:
    async def go() -> None:
        async with BrowserGymEnv(base_url=server.url) as env:
            await env.reset(seed=1, task_name="click-test", observation_delay=0.3)
            waited = await env.step(BrowserGymAction(action_str="noop(0)"))
            assert waited.observation.metadata["timing"]["action_s"] >= 0.3
            await env.reset(seed=1, task_name="click-test")  # back to the server's default (0)
            quick = await env.step(BrowserGymAction(action_str="noop(0)"))
            assert quick.observation.metadata["timing"]["action_s"] < 0.3
            with pytest.raises(EnvServerRefused, match="observation_delay"):
                await env.reset(seed=1, observation_delay=30)

    run(go())


def test_max_steps_per_episode(server: LocalEnvServer) -> None:
    """A suite's tasks need different caps: each reset may set its own (the server's, 5 here, otherwise)."""

    async def steps_until_truncated(**reset: int) -> int:
        async with BrowserGymEnv(base_url=server.url) as env:
            await env.reset(seed=1, task_name="click-test", **reset)
            for step in range(1, 20):
                result = await env.step(BrowserGymAction(action_str="noop(0)"))
                if result.done:
                    assert result.observation.metadata["truncated"]
                    return step
        raise AssertionError("never truncated")

    async def go() -> None:
        assert await steps_until_truncated(max_steps=2) == 2
        assert await steps_until_truncated(max_steps=8) == 8
        assert await steps_until_truncated() == 5
        async with BrowserGymEnv(base_url=server.url) as env:
            with pytest.raises(EnvServerRefused, match="max_steps"):
                await env.reset(seed=1, max_steps=0)

    run(go())


def test_over_capacity_is_refused_clearly(server: LocalEnvServer) -> None:
    async def go() -> None:
        clients = [BrowserGymEnv(base_url=server.url) for _ in range(4)]
        for c in clients:
            await c.connect()
            await c.state()  # the session exists once the server answered (no browser until reset)
        extra = BrowserGymEnv(base_url=server.url)
        with pytest.raises(EnvServerRefused) as refused:
            await extra.reset(seed=0)
        assert refused.value.code == "CAPACITY_REACHED"
        await extra.close()
        await clients[0].close()
        for _ in range(50):  # the server frees the slot when it sees the disconnect
            try:
                async with BrowserGymEnv(base_url=server.url) as again:
                    await again.state()
                break
            except EnvServerRefused:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("a closed session's slot was not freed")
        for c in clients[1:]:
            await c.close()

    run(go())


def test_openenv_generic_client_speaks_the_protocol(server: LocalEnvServer) -> None:
    """A client that only knows OpenEnv's wire format (dict actions, dict observations) works unchanged."""

    async def go() -> None:
        async with GenericEnvClient(base_url=server.url) as env:
            first = await env.reset(seed=3, task_name="click-test")
            obs = first.observation
            expected = {
                "text",
                "url",
                "goal",
                "axtree_txt",
                "pruned_html",
                "error",
                "last_action_error",
                "screenshot",
            }
            assert expected <= set(obs) and obs["metadata"]["seed"] == 3
            bid = find_bid(obs["axtree_txt"], "button", "Click Me!")
            result = await env.step({"action_str": f"click('{bid}')"})
            assert result.reward == 1.0 and result.done

    run(go())


def test_http_reset_endpoint_leaves_no_browser(server: LocalEnvServer) -> None:
    """openenv's stateless HTTP /reset makes and closes an env per call, from different threads."""
    request = urllib.request.Request(
        server.url + "/reset",
        data=json.dumps({"seed": 3}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.loads(response.read())
    assert "Click Me!" in body["observation"]["axtree_txt"]
    assert wait_until(lambda: browser_count(server.pid) == 0, timeout=10)
