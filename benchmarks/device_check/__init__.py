"""One device check: the GPU numbers users ask about, measured side by side in one run.

    benchmarks/device_check.sh                 # on one GPU, under 8 minutes; writes benchmarks/device_check.json
    benchmarks/device_check.sh --cpu --out /tmp/dry.json    # tiny sizes on the CPU: exercises every part
    python -m benchmarks.device_check --cpu    # the same without the shell wrapper's outer timeout

Parts (each in its own process, with its own time budget; a part that fails or runs out of time is
recorded with its error and the others still run; the JSON is rewritten after every part):
  synth          `mixweight data synth` at the check's seq_len, then the manifest's vocab_size widened to
                 --vocab (50257, GPT-2's): the token ids stay < 256, the model gets a 50257-row embedding
                 and output projection, so memory and FLOPs are those of the real model
  mixweight      `mixweight train` (the CLI entry point, in the worker process), plain mean loss, the defaults
                 otherwise (so loss_impl auto, which is chunked at V=50257 x L=512)
  transformers   `transformers.Trainer` on the same model spec, init, corpus blocks, batch, optimizer and
                 schedule (benchmarks/throughput.py's dataset, collator and Trainer subclass)
  linupper       `mixweight train` with sample_weighting linupper (overhead vs the mixweight arm)
  proxy_steps    benchmarks/proxy_cost.py's arms on the device: plain step, DoReMi proxy step, DoGE proxy step
  loss_full, loss_chunked   loss_impl full | chunked
  compile        compile: true vs the mixweight (eager) arm

Each `mixweight train` arm is one YAML config (`mixweight train --config`): the check's base settings plus
the arm's feature. Whether a feature exists is asked of the code, not of `--help`: the feature's key must be
a field of mixweight.train.config.TrainConfig (features.py); an arm whose key is absent is recorded as
"not available", naming the key. The JSON's `flags` says which features this checkout has.

tokens/s = tokens per step / median step time over the steps after the first --drop-steps.
  mixweight: its own per-step `time.tokens_per_s` (metrics.jsonl, log_every 1): data, forward,
  backward, clip, optimizer, scheduler; the step ends in a host sync (`.item()` of the weighted loss).
  transformers: the period between consecutive `on_step_end` callbacks, each after torch.cuda.synchronize(),
  so it holds the same work (data included) and no step's GPU work leaks into the next.
MFU = FLOPs per token x tokens/s / the device's peak dense bf16 FLOPs, FLOPs per token = 6N + 12*L*H*Q*T
  (the PaLM appendix B / nanoGPT estimate: N = parameters that take part in matmuls, i.e. without the
  position embedding, the input embedding counted once as the output projection when tied; L layers,
  H heads, Q head size, T sequence length; the attention term counts the full T x T scores as those
  estimates do). Peak memory = torch.cuda.max_memory_allocated() of the worker (CPU: the worker's max RSS,
  labelled so).

Modules: plan.py (sizes, budgets, parts, arms), features.py (what the code has), flops.py (model FLOPs and
device peaks), measure.py (the worker of each part), driver.py (runs the parts, keeps the JSON), report.py
(the tables), cli.py (the command line).
"""
