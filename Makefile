# Build the default model on a CPU machine (see docs/model-card.md).
#   make default-model            # every stage but `ship`, under two hours on 2 cores
#   make ship                     # replace the shipped weights with the run's model
#   make default-model CORPUS=/path/to/existing/corpus   # reuse a corpus already built
#   make default-model LFW=/path/to/lfw150.tar           # the LFW faces archive (or $DEEPFAKE_MOE_LFW)
#   make default-model EDIT_EXPERTS=/path/to/model       # other edit experts (a model folder, or MODEL:i,j)
# The model is two groups of experts (model/groups.py): the first model's three edit experts (EDIT_EXPERTS, with
# their threshold and temperature; commit e3f9fd5's recipe rebuilds them: `git checkout e3f9fd5 && make
# default-model`) and one generator expert trained here on the offline corpus's generator families, on native
# 64 px patches (configs/default_generators.yaml).
# `make candidate` trains an earlier candidate recipe (three experts on every fake; configs/default.yaml).
RUN ?= runs/default
CORPUS ?= $(RUN)/corpus
LFW ?= $(or $(DEEPFAKE_MOE_LFW),../shared/data/lfw150.tar)
SHIPPED := src/deepfake_moe/weights/default
EDIT_EXPERTS ?= default:0,1,2
NAME := deepfake-moe default (3 edit experts at 112 px + 1 generator expert on 64 px patches, efficientnet_lite0)

.PHONY: default-model corpus holdout split train combine calibrate evaluate ship candidate leave-one-out \
	ship-uncertainty lint test

default-model: corpus holdout split train combine calibrate evaluate

# Reals, their re-encodings, six edit families and face swaps (700 reals each), five generator
# families (800 reals each) and as many reals shrunk to the 64 px of the two face generators. The
# benign real_* families are left out: each transforms reals only, and the output chain that every
# image leaves through (augment/chain.py) already re-encodes, shrinks, blurs and colours both labels.
EDITS := self_blend splice copy_move inpaint retouch masked_fill
GENERATORS := esrgan span_sr autoencoder dcgan_face stylegan_lite
comma := ,
empty :=
space := $(empty) $(empty)
corpus:
	deepfake-moe corpus $(CORPUS) --lfw $(LFW) --size 256 --limit-reals 1000 --fetch --workers 2 \
		--families $(subst $(space),$(comma),real_reencode $(EDITS) faceswap $(GENERATORS)) \
		$(foreach f,$(EDITS),--max-reals $(f)=700) $(foreach f,$(GENERATORS),--max-reals $(f)=800) \
		--train-steps autoencoder=400 --train-steps stylegan_lite=1000

holdout:
	deepfake-moe holdout $(CORPUS)/manifest.parquet --out $(RUN)/holdout \
		--holdout-source faceswap --holdout-dataset mate-backgrounds --test-fraction 0.15 --val-fraction 0.1 --seed 0

split:
	deepfake-moe split $(RUN)/holdout/pool.parquet --k 3 --encoder efficientnet_lite0 --pretrained offline \
		--size 128 --per-label --stratify dataset --workers 2 --out $(RUN)/split

train:
	deepfake-moe train configs/default_generators.yaml --out $(RUN)/train --no-uncertainty

# The edit experts (at their own threshold and temperature) and the generator expert as two groups;
# uncertainty statistics on 1,200 pool images.
combine:
	deepfake-moe combine $(EDIT_EXPERTS) $(RUN)/train/model --groups --keep-calibration --fp16 --name "$(NAME)" \
		--out $(RUN)/model
	deepfake-moe fit-uncertainty $(RUN)/holdout/pool.parquet --weights $(RUN)/model --max-images 1200

# The generator group's floor at 0.5% FPR for each source of validation reals (untouched, re-encoded, shrunk: the
# highest counts), shifted onto the edit experts' threshold (kept: it was fitted on 630 more varied reals);
# uncertain for 5% of them.
calibrate:
	deepfake-moe calibrate $(RUN)/holdout/val.parquet --weights $(RUN)/model --target-fpr 0.005 --keep-threshold --fpr-per-source \
		--target-coverage 0.95 --out $(RUN)/calibrate

evaluate:
	deepfake-moe evaluate $(RUN)/holdout/test.parquet --weights $(RUN)/model --out $(RUN)/evaluate --robustness

candidate:
	deepfake-moe train configs/default.yaml --out $(RUN)/candidate

ship:
	deepfake-moe convert $(RUN)/model $(SHIPPED) --fp16

# Each generator family held out of training in turn (docs/model-card.md's table).
leave-one-out:
	deepfake-moe experiment leave-one-out configs/experiment_leave_one_out.yaml --out $(RUN)/leave_one_out

# Refit the shipped model's uncertainty statistics (training pool) and threshold (val) without retraining:
# model.safetensors stays as it is; uncertainty.safetensors and model.yaml change.
ship-uncertainty:
	deepfake-moe fit-uncertainty $(RUN)/holdout/pool.parquet --weights $(SHIPPED) --max-images 1200
	deepfake-moe calibrate $(RUN)/holdout/val.parquet --weights $(SHIPPED) --uncertainty-only \
		--target-coverage 0.95 --out $(RUN)/calibrate-uncertainty

lint:
	python3 -m ruff check src tests benchmarks

test: lint
	python3 -m pytest -q
