"""The torch-free host simulator: LiteRT-LM's runtime components, one module each.

| module            | LiteRT-LM counterpart                          | role |
|-------------------|------------------------------------------------|------|
| executor          | runtime/executor/llm_executor_base.h           | prefill/decode interface, masks |
| litert_executor   | llm_litert_compiled_model_executor.cc          | the decoder .tflite through CompiledModel, KV caches held between calls |
| fake_executor     | runtime/executor/fake_llm_executor.h           | scripted logits for pipeline tests |
| prefill_plan      | litert_compiled_model_executor_utils.cc        | which prefill_<N> signatures cover a prompt |
| embedding         | runtime/components/embedding_lookup.h          | token ids -> embeddings / per-layer embeddings |
| tokenizer         | runtime/components/sentencepiece_tokenizer.h   | text <-> ids, streaming detokenization |
| sampler           | runtime/components/top_p_cpu_sampler.h         | greedy / temperature / top-k / top-p |
| pipeline          | runtime/framework (session)                    | template, chunked prefill, decode loop, stop tokens |
| metrics           | executor_stats.h                               | TTFT, tokens/s, peak RSS |
| loader            | engine creation                                | artifact directory -> Pipeline |

Nothing here imports torch: the simulator runs where the phone's runtime runs.
"""
