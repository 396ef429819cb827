"""The command's two jobs, end to end: the broadcast and the echo.

Every standard-input line (``\\n``-split, one trailing ``\\r`` stripped, empty
lines kept) reaches every client, in order and promptly; invalid UTF-8 arrives
as U+FFFD; ``--history`` replays the last lines, then the live feed. The echo
goes back to the sender only, text as text and binary as binary, and
``--no-echo`` still reads messages (pings answered, broadcasts flowing). At the
end of input the server keeps serving, or with ``--exit-on-eof`` it delivers
every line, closes each client with 1000 and exits 0.
"""

from __future__ import annotations

import pytest
import trio

from .conftest import running_command
from .e2e import (
    assert_clean,
    echoes,
    exited,
    local_port,
    recv_text,
    recv_texts,
    seen_connected,
    stop,
    ws,
)

pytestmark = pytest.mark.e2e


async def test_stdin_lines_reach_every_client_in_order() -> None:
    with trio.fail_after(10):
        async with running_command() as process:
            async with ws(process.url) as first, ws(process.url) as second:
                await seen_connected(process, local_port(first))
                await seen_connected(process, local_port(second))
                # One line at a time: each arrives before anything else is written.
                for line in ("alpha", "beta", "gamma"):
                    await process.write(f"{line}\n".encode())
                    assert await recv_text(first) == line
                    assert await recv_text(second) == line
                # Splitting: \n ends a line, one trailing \r goes, empty lines stay.
                await process.write(b"one\r\n\ntwo\nin\rside\r\nkeeps one \r\r\n\n\nend\n")
                expected = ["one", "", "two", "in\rside", "keeps one \r", "", "", "end"]
                assert await recv_texts(first, len(expected)) == expected
                assert await recv_texts(second, len(expected)) == expected
                # Many lines, in order, to both.
                many = [f"line {i}" for i in range(500)]
                await process.write(("\n".join(many) + "\n").encode())
                assert await recv_texts(first, 500) == many
                assert await recv_texts(second, 500) == many
                # A line longer than any one read of the input arrives whole.
                long_line = "".join(f"{i:07d}" for i in range(30_000))
                await process.write(long_line.encode() + b"\nafter it\n")
                for client in (first, second):
                    assert await recv_texts(client, 2) == [long_line, "after it"]
            await stop(process)


async def test_invalid_utf8_arrives_as_replacement_characters() -> None:
    raw_lines = [
        b"ok\xff\xfebad",
        b"\xc3",
        b"truncated \xe2\x82",
        b"surrogate \xed\xa0\x80",
        b"overlong \xc0\xaf",
        b"caf\xc3\xa9 is fine",
    ]
    expected = [raw.decode("utf-8", errors="replace") for raw in raw_lines]
    assert all("\ufffd" in text for text in expected[:-1])
    with trio.fail_after(10):
        async with running_command() as process:
            async with ws(process.url) as client:
                await seen_connected(process, local_port(client))
                await process.write(b"\n".join(raw_lines) + b"\n")
                assert await recv_texts(client, len(raw_lines)) == expected
                # A multi-byte character split across two writes is still one character.
                await process.write(b"split \xe2\x82")
                await process.write(b"\xac\n")
                assert await recv_text(client) == "split \u20ac"
                await echoes(client, "alive")
            assert process.process.returncode is None
            await stop(process)


async def test_echo_goes_back_to_the_sender_only_with_its_type() -> None:
    with trio.fail_after(10):
        async with running_command() as process:
            async with ws(process.url) as sender, ws(process.url) as other:
                await seen_connected(process, local_port(sender))
                await seen_connected(process, local_port(other))
                await sender.send("text stays text")
                assert await sender.recv() == "text stays text"
                await sender.send(b"\x00\xffbinary stays binary")
                echoed = await sender.recv()
                assert isinstance(echoed, bytes)
                assert echoed == b"\x00\xffbinary stays binary"
                await sender.send("")
                assert await sender.recv() == ""
                await sender.send(["one message ", "in three ", "fragments"])
                assert await sender.recv() == "one message in three fragments"
                # The echoes went out before this line was read; the other client
                # must see the line first, having been sent none of them.
                await process.write(b"broadcast\n")
                assert await recv_text(other) == "broadcast"
                assert await recv_text(sender) == "broadcast"
            await stop(process)


async def test_no_echo_still_reads_client_messages() -> None:
    with trio.fail_after(10):
        async with running_command("--no-echo") as process:
            async with ws(process.url) as client:
                await seen_connected(process, local_port(client))
                for message in ("not echoed", b"nor this", "x" * 100_000):
                    await client.send(message)
                # Messages are still read: a ping queued behind them is answered.
                pong = await client.ping()
                await pong.wait()
                await process.write(b"broadcast still arrives\n")
                assert await client.recv() == "broadcast still arrives"
                await client.send("and again")
                await (await client.ping()).wait()
                await process.write(b"second\n")
                assert await client.recv() == "second"
            await stop(process)


async def test_history_replays_the_last_lines_then_goes_live() -> None:
    with trio.fail_after(10):
        async with running_command("--history", "3") as process:
            async with ws(process.url) as early:
                await seen_connected(process, local_port(early))
                await process.write(b"a\nb\n")
                assert await recv_texts(early, 2) == ["a", "b"]
                # Fewer lines than --history so far: all of them.
                async with ws(process.url) as second:
                    await seen_connected(process, local_port(second))
                    await process.write(b"\n")
                    assert await recv_texts(second, 3) == ["a", "b", ""]
                await process.write(b"d\ne\n")
                assert await recv_texts(early, 3) == ["", "d", "e"]
                # More: the last three, then the live feed with no gap or duplicate.
                async with ws(process.url) as late:
                    await seen_connected(process, local_port(late))
                    await process.write(b"live\n")
                    assert await recv_texts(late, 4) == ["", "d", "e", "live"]
                    assert await recv_text(early) == "live"
            await stop(process)


async def test_server_keeps_serving_after_end_of_input() -> None:
    with trio.fail_after(10):
        async with running_command() as process:
            async with ws(process.url) as before:
                await seen_connected(process, local_port(before))
                await process.write(b"last line\n")
                assert await recv_text(before) == "last line"
                await process.close_stdin()
                await process.read_stderr_until(r"end of input after 1 lines")
                await echoes(before, "still here")
                async with ws(process.url) as after:
                    await echoes(after, "connected after the end of input")
                    await echoes(after, b"\x01\x02")
                assert process.process.returncode is None
            await stop(process)


async def test_exit_on_eof_delivers_everything_then_closes_with_1000() -> None:
    with trio.fail_after(10):
        async with running_command("--exit-on-eof") as process:
            async with ws(process.url) as first, ws(process.url) as second:
                await seen_connected(process, local_port(first))
                await seen_connected(process, local_port(second))
                lines = [f"line {i} " + "y" * 200 for i in range(1000)]
                await process.write(("\n".join(lines) + "\nno newline at the end").encode())
                await process.close_stdin()
                for client in (first, second):
                    received = [message async for message in client]  # ends on 1000
                    assert received == [*lines, "no newline at the end"]
                    assert client.close_code == 1000
            code, stderr = await exited(process)
            assert code == 0, stderr
            assert_clean(stderr)
