# The module table (docs/architecture.md): for each module of src/, the headers of
# include/quarot/ it owns and the modules it may use. src/CMakeLists.txt builds one library per
# module linking exactly these; tests/check_module_deps.cmake (ctest module_deps) checks every
# #include "quarot/..." of a module's sources and headers against it, so an edge that runs back
# up the graph fails the build's tests.
set(QUAROT_MODULES base model io tokenizer eval ops rotate quant qdec pack runtime report gguf pipeline)

set(QUAROT_base_HEADERS error isa large_buffer progress dtype version json_limits options detail/rng detail/eigen detail/fixed_chunks)
set(QUAROT_base_DEPS)
list(APPEND QUAROT_base_HEADERS act16)  # W4A16's 16-bit activation codes: the ops kernel and quant's simulation
set(QUAROT_model_HEADERS config weights forward synth finite)
set(QUAROT_model_DEPS base)
set(QUAROT_io_HEADERS mapped_file atomic_file signal_cleanup file_identity safetensors sha256 checkpoint gguf_reader)
set(QUAROT_io_DEPS base model)
set(QUAROT_tokenizer_HEADERS tokenizer hf_tokenizer)
set(QUAROT_tokenizer_DEPS base model io)
set(QUAROT_eval_HEADERS eval tasks)
set(QUAROT_eval_DEPS base model io tokenizer)
set(QUAROT_ops_HEADERS int4 qdec_kernels kv_kernels)
set(QUAROT_ops_DEPS base)
list(APPEND QUAROT_ops_HEADERS int8_gemv)
list(APPEND QUAROT_ops_HEADERS fwht)
list(APPEND QUAROT_ops_HEADERS int4_a16)
set(QUAROT_rotate_HEADERS hadamard rotate)
set(QUAROT_rotate_DEPS base model ops)  # ops: the FWHT under the Hadamard transforms
set(QUAROT_quant_HEADERS quant quantize detail/linalg detail/gptq_factor)
set(QUAROT_quant_DEPS base model io tokenizer eval rotate)
set(QUAROT_qdec_HEADERS qdec)
set(QUAROT_qdec_DEPS base model ops)
set(QUAROT_pack_HEADERS packed)
set(QUAROT_pack_DEPS base model io ops rotate quant qdec)
set(QUAROT_runtime_HEADERS runtime qdec_runtime)
set(QUAROT_runtime_DEPS base model io ops rotate quant qdec pack)
set(QUAROT_report_HEADERS report)
set(QUAROT_report_DEPS base)
set(QUAROT_gguf_HEADERS gguf)
set(QUAROT_gguf_DEPS base model io tokenizer rotate quant)
set(QUAROT_pipeline_HEADERS pipeline)
set(QUAROT_pipeline_DEPS base model io tokenizer eval ops rotate quant qdec pack runtime report gguf)

# Sources outside their module's folder (moved when the work on them elsewhere has landed):
# src/io/dtype.cpp is base (element types; model's weights need it, io's formats too).
set(QUAROT_SOURCE_MODULE_OVERRIDES "io/dtype.cpp=base")
