# asr: every target depends on `install`, so any of them works as the first command on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
RUN ?= runs/default
PROTO := proto/asr/v1/asr.proto
STUBS := server/gen/asr/v1/asr_pb2.py server/gen/asr/v1/asr_pb2_grpc.py server/gen/asr/v1/asr_pb2.pyi
# dev-asterisk and dev-synth exist only where their packages were installed when make data ran
EVAL_SETS ?= corpus/dev-fsdd.jsonl corpus/dev-an4.jsonl corpus/dev-pocketsphinx.jsonl $(wildcard corpus/dev-asterisk.jsonl corpus/dev-synth.jsonl)

.PHONY: install system-deps lint format test data data-kokoro data-kokoro-mix data-rhvoice data-uqm train eval eval-long lm proto serve demo bench test-reliability

install: $(STAMP)  ## create .venv and install asr into it (a second run does nothing)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,corpus]'
	touch $(STAMP)

system-deps:  ## Debian packages: speech synthesisers and voices for the training corpus (enables contrib/non-free)
	$(SUDO) bash scripts/system_deps.sh

lint: install  ## ruff check and format check over the whole tree
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install  ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

proto: $(STUBS)  ## regenerate the gRPC stubs in server/gen/ from proto/ (only when the proto changed)

$(STUBS) &: $(PROTO) | $(STAMP)
	$(PY) -m server.protogen

serve: install proto  ## run the gRPC server with the bundled model: make serve ARGS="--port 50051 --metrics-port 9090"
	$(VENV)/bin/asr-serve $(ARGS)

demo: install proto  ## stream samples/goforward.flac to a fresh server with the bundled model (MODEL=..., CLIP=...)
	PY=$(PY) MODEL=$(or $(MODEL),models/default.pt) scripts/demo.sh

test: install lint  ## lint, then the test suite
	$(PY) -m pytest -q

data: install  ## build the training/dev speech corpus under corpus/ (needs make system-deps; ~45 min on 2 cores, most of it Kokoro)
	nice -n 10 $(PY) scripts/build_corpus.py --out corpus $(DATA_ARGS)

data-kokoro: install  ## 9 h more of Kokoro's voices under corpus-kokoro/ (~35 min), for TRAIN_ARGS="--train ..." (README)
	nice -n 10 $(PY) scripts/build_corpus.py --out corpus-kokoro --engines kokoro --hours 9 --seed 4321 $(DATA_ARGS)

data-kokoro-mix: install  ## 9 h of 160 new voices mixed from Kokoro's under corpus-kokoro-mix/ (~35 min), as data-kokoro
	nice -n 10 $(PY) scripts/build_corpus.py --out corpus-kokoro-mix --engines kokoro-mix --hours 9 --seed 6789 $(DATA_ARGS)

data-rhvoice: install  ## 2 h of RHVoice's 6 English voices (Debian's non-free rhvoice-english) under corpus-rhvoice/ (~2 min), as data-kokoro
	nice -n 10 $(PY) scripts/build_corpus.py --out corpus-rhvoice --engines rhvoice --hours 2 --seed 5555 $(DATA_ARGS)

data-uqm: install  ## 8.5 h of real acted dialogue (Debian's non-free uqm-voice, CC BY-NC-SA) under corpus-uqm/ (~1 min; UQM_ARGS="--copies 1" adds augmented copies)
	nice -n 10 $(PY) scripts/build_uqm.py --out corpus-uqm $(UQM_ARGS)

train: install  ## train the default model from corpus/ into $(RUN) (resumes from $(RUN)/last.pt)
	$(PY) -m asr.train --out $(RUN) $(TRAIN_ARGS)

eval-long: install  ## WER of whole streaming sessions on long audio (joined clips, long silences), resets off/on
	$(PY) scripts/eval_long.py --model $(or $(MODEL),models/default.pt)

lm: install  ## word 3-gram LM + lexicon for beam search: LJ Speech sentences (less the dev sets') + the corpus transcripts
	test -f corpus/train.jsonl || { echo "make lm needs the corpus: run make data first" >&2; exit 1; }
	$(PY) -c 'import glob,json,sys; dev={json.loads(l)["text"] for f in glob.glob("corpus/dev-*.jsonl") for l in open(f)}; [print(s,end="") for s in open(sys.argv[1]) if s.strip() not in dev]' \
		$$($(PY) -c 'from asr.data import shared_data_dir; print(shared_data_dir())')/text/ljspeech-sentences.txt > corpus/lm-text.txt
	$(PY) -c 'import json,sys; [print(json.loads(l)["text"]) for l in open("corpus/train.jsonl")]' >> corpus/lm-text.txt
	$(PY) -m asr.decoding build-lm --text corpus/lm-text.txt --order 3 --out corpus/lm.arpa --lexicon corpus/lexicon.txt

eval: install  ## WER/CER/RTF of the bundled model (or MODEL=...) on the dev sets, full/streaming, and pocketsphinx's
	$(PY) -m asr.evaluate --peer --model $(or $(MODEL),models/default.pt) --json $(RUN)/eval.json $(EVAL_ARGS) $(EVAL_SETS)

bench: install proto  ## speed of every stage against a peer in the same run; prints a table, writes runs/bench.json
	$(PY) -m bench.run --json runs/bench.json $(BENCH_ARGS)

test-reliability: install proto  ## fuzzing, disconnects, thousands of streams, cross-talk, SIGTERM, kill -9 in training
	ASR_RELIABILITY=1 $(PY) -m pytest -q -s tests/reliability
