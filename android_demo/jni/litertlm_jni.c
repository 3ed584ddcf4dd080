/*
 * JNI shim over the LiteRT-LM C API (c/engine.h of LiteRT-LM, as exported by
 * liblitert-lm.so of litert-lm-api 0.18.1), for com.gemma3nedge.demo.LiteRtLm.
 *
 * Why it looks like this:
 *  - liblitert-lm.so has no JNI entry points and no SONAME, so it cannot be a
 *    DT_NEEDED of this library: it is dlopen'ed by full path (nativeInit) and
 *    every entry point is looked up with dlsym into one table.
 *  - It is built without the NDK (clang --target=aarch64-linux-android24
 *    -ffreestanding -nostdinc -nostdlib): no libc headers, so the handful of
 *    libc/libdl functions used are declared here; they resolve at load time
 *    against the device's libc.so / libdl.so. The same file builds for x86_64
 *    (desktop JVM test) with the host compiler.
 *  - Strings cross the boundary as NUL-terminated UTF-8 byte[]: JNI's
 *    NewStringUTF/GetStringUTFChars use *modified* UTF-8, which mangles emoji.
 *  - Stream callbacks arrive on a runtime thread: it is attached to the JVM for
 *    the call and detached after (ART aborts if an attached thread exits).
 */
#include <jni.h>

#include <stddef.h> /* freestanding: size_t, NULL */
void *malloc(size_t n);
void free(void *p);
void *dlopen(const char *path, int flags);
void *dlsym(void *handle, const char *name);
char *dlerror(void);
#define SHIM_RTLD_NOW 2 /* same value in bionic and glibc */

/* ---- the C API, as declared in LiteRT-LM's c/engine.h (opaque handles) ---- */
typedef void (*StreamCallback)(void *data, const void *chunk);

#define API_FUNCTIONS(X)                                                                 \
  X(void, set_min_log_level, (int))                                                      \
  X(const char *, get_last_error_message, (void))                                        \
  X(void *, engine_settings_create, (const char *, const char *, const char *, const char *)) \
  X(void, engine_settings_delete, (void *))                                              \
  X(void, engine_settings_set_max_num_tokens, (void *, int))                             \
  X(void, engine_settings_set_cache_dir, (void *, const char *))                         \
  X(void, engine_settings_enable_benchmark, (void *))                                    \
  X(void *, engine_create, (const void *))                                               \
  X(void, engine_delete, (void *))                                                       \
  X(void *, sampler_params_create, (int))                                                \
  X(void, sampler_params_delete, (void *))                                               \
  X(void, sampler_params_set_top_k, (void *, int))                                       \
  X(void, sampler_params_set_top_p, (void *, float))                                     \
  X(void, sampler_params_set_temperature, (void *, float))                               \
  X(void, sampler_params_set_seed, (void *, int))                                        \
  X(void *, session_config_create, (void))                                               \
  X(void, session_config_delete, (void *))                                               \
  X(void, session_config_set_max_output_tokens, (void *, int))                           \
  X(void, session_config_set_apply_prompt_template, (void *, _Bool))                     \
  X(void, session_config_set_sampler_params, (void *, const void *))                     \
  X(void *, conversation_config_create, (void))                                          \
  X(void, conversation_config_delete, (void *))                                          \
  X(void, conversation_config_set_session_config, (void *, const void *))                \
  X(void *, conversation_create, (void *, void *))                                       \
  X(void, conversation_delete, (void *))                                                 \
  X(int, conversation_send_message_stream,                                               \
    (void *, const char *, const char *, const void *, StreamCallback, void *))          \
  X(void, conversation_cancel_process, (void *))                                         \
  X(void *, conversation_get_benchmark_info, (void *))                                   \
  X(void, benchmark_info_delete, (void *))                                               \
  X(double, benchmark_info_get_time_to_first_token, (const void *))                      \
  X(double, benchmark_info_get_total_init_time_in_second, (const void *))                \
  X(int, benchmark_info_get_num_prefill_turns, (const void *))                           \
  X(int, benchmark_info_get_num_decode_turns, (const void *))                            \
  X(int, benchmark_info_get_prefill_token_count_at, (const void *, int))                 \
  X(int, benchmark_info_get_decode_token_count_at, (const void *, int))                  \
  X(double, benchmark_info_get_prefill_tokens_per_sec_at, (const void *, int))           \
  X(double, benchmark_info_get_decode_tokens_per_sec_at, (const void *, int))            \
  X(const char *, stream_chunk_get_text, (const void *))                                 \
  X(_Bool, stream_chunk_is_final, (const void *))                                        \
  X(const char *, stream_chunk_get_error, (const void *))                                \
  X(void *, engine_create_session, (void *, void *))                                     \
  X(void, session_delete, (void *))                                                      \
  X(void *, input_data_create, (int, const void *, size_t))                              \
  X(void, input_data_delete, (void *))                                                   \
  X(int, session_run_prefill, (void *, const void *const *, size_t))                     \
  X(void *, session_run_decode, (void *))                                                \
  X(const char *, responses_get_response_text_at, (const void *, int))                   \
  X(void, responses_delete, (void *))                                                    \
  X(void *, engine_tokenize, (void *, const char *))                                     \
  X(const int *, tokenize_result_get_tokens, (const void *))                             \
  X(size_t, tokenize_result_get_num_tokens, (const void *))                              \
  X(void, tokenize_result_delete, (void *))                                              \
  X(void *, engine_detokenize, (void *, const int *, size_t))                            \
  X(const char *, detokenize_result_get_string, (const void *))                          \
  X(void, detokenize_result_delete, (void *))                                            \
  X(void *, loaded_file_create, (const char *))                                          \
  X(void, loaded_file_delete, (void *))                                                  \
  X(_Bool, loaded_file_supports_input_modality, (void *, int))

#define DECLARE_FIELD(ret, name, args) ret(*name) args;
static struct { API_FUNCTIONS(DECLARE_FIELD) } api;
static int api_loaded;
static JavaVM *jvm;

/* The header declares top-k (1), top-p (2) and greedy (3), but the 0.18.1 runtime answers "Sampler
 * type: N not implemented yet" for 1 and 3 (checked on the desktop build): greedy is top-p with
 * k = 1, as the runtime's own Python binding does it. */
enum { kSamplerTopP = 2, kInputText = 0 };

/* ---- small helpers (no libc string functions in a freestanding build) ---- */
static size_t c_strlen(const char *s) {
  size_t n = 0;
  while (s && s[n]) n++;
  return n;
}

static jbyteArray to_bytes(JNIEnv *env, const char *s) {
  if (!s) return NULL;
  jsize n = (jsize)c_strlen(s);
  jbyteArray out = (*env)->NewByteArray(env, n);
  if (out) (*env)->SetByteArrayRegion(env, out, 0, n, (const jbyte *)s);
  return out;
}

/* Copy of a Java byte[] with a NUL appended (caller frees); NULL for a null array. */
static char *from_bytes(JNIEnv *env, jbyteArray a) {
  if (!a) return NULL;
  jsize n = (*env)->GetArrayLength(env, a);
  char *s = (char *)malloc((size_t)n + 1);
  if (!s) return NULL;
  (*env)->GetByteArrayRegion(env, a, 0, n, (jbyte *)s);
  s[n] = 0;
  return s;
}

static jbyteArray last_error(JNIEnv *env, const char *fallback) {
  const char *msg = api.get_last_error_message ? api.get_last_error_message() : NULL;
  return to_bytes(env, (msg && msg[0]) ? msg : fallback);
}

JNIEXPORT jint JNICALL JNI_OnLoad(JavaVM *vm, void *reserved) {
  (void)reserved;
  jvm = vm;
  return JNI_VERSION_1_6;
}

/* byte[] nativeInit(byte[] libPath): null on success, else the error message. */
JNIEXPORT jbyteArray JNICALL Java_com_gemma3nedge_demo_LiteRtLm_nativeInit(JNIEnv *env, jclass cls,
                                                                          jbyteArray jpath) {
  (void)cls;
  if (api_loaded) return NULL;
  char *path = from_bytes(env, jpath);
  void *lib = dlopen(path, SHIM_RTLD_NOW);
  free(path);
  if (!lib) return to_bytes(env, dlerror());
#define LOOKUP(ret, name, args)                                             \
  *(void **)&api.name = dlsym(lib, "litert_lm_" #name);                     \
  if (!api.name) return to_bytes(env, "missing symbol litert_lm_" #name);
  API_FUNCTIONS(LOOKUP)
#undef LOOKUP
  api.set_min_log_level(3 /* warning */);
  api_loaded = 1;
  return NULL;
}

JNIEXPORT jbyteArray JNICALL Java_com_gemma3nedge_demo_LiteRtLm_nativeLastError(JNIEnv *env, jclass c) {
  (void)c;
  return last_error(env, "unknown error (the runtime gave no message)");
}

JNIEXPORT jboolean JNICALL Java_com_gemma3nedge_demo_LiteRtLm_nativeSupportsModality(
    JNIEnv *env, jclass c, jbyteArray jpath, jint modality) {
  (void)c;
  char *path = from_bytes(env, jpath);
  void *file = api.loaded_file_create(path);
  free(path);
  if (!file) return JNI_FALSE;
  jboolean yes = api.loaded_file_supports_input_modality(file, modality) ? JNI_TRUE : JNI_FALSE;
  api.loaded_file_delete(file);
  return yes;
}

JNIEXPORT jlong JNICALL Java_com_gemma3nedge_demo_LiteRtLm_nativeCreateEngine(
    JNIEnv *env, jclass c, jbyteArray jmodel, jbyteArray jbackend, jbyteArray jvision,
    jbyteArray jaudio, jint max_num_tokens, jbyteArray jcache) {
  (void)c;
  char *model = from_bytes(env, jmodel), *backend = from_bytes(env, jbackend);
  char *vision = from_bytes(env, jvision), *audio = from_bytes(env, jaudio);
  char *cache = from_bytes(env, jcache);
  void *settings = api.engine_settings_create(model, backend, vision, audio);
  void *engine = NULL;
  if (settings) {
    if (max_num_tokens > 0) api.engine_settings_set_max_num_tokens(settings, max_num_tokens);
    if (cache) api.engine_settings_set_cache_dir(settings, cache);
    api.engine_settings_enable_benchmark(settings); /* init time, TTFT, tok/s */
    engine = api.engine_create(settings);
    api.engine_settings_delete(settings);
  }
  free(model); free(backend); free(vision); free(audio); free(cache);
  return (jlong)(size_t)engine;
}

JNIEXPORT void JNICALL Java_com_gemma3nedge_demo_LiteRtLm_nativeDeleteEngine(JNIEnv *e, jclass c, jlong h) {
  (void)e; (void)c;
  if (h) api.engine_delete((void *)(size_t)h);
}

/* Session config shared by conversations and raw sessions. greedy => argmax (top-p sampler, k = 1). */
static void *make_session_config(jboolean greedy, jfloat temperature, jint top_k, jfloat top_p,
                                 jint seed, jint max_output_tokens, int apply_template) {
  void *config = api.session_config_create();
  if (!config) return NULL;
  void *sampler = api.sampler_params_create(kSamplerTopP);
  if (sampler) {
    api.sampler_params_set_top_k(sampler, greedy ? 1 : top_k);
    api.sampler_params_set_top_p(sampler, greedy ? 1.0f : top_p);
    api.sampler_params_set_temperature(sampler, temperature);
    api.sampler_params_set_seed(sampler, seed);
    api.session_config_set_sampler_params(config, sampler);
    api.sampler_params_delete(sampler);
  }
  if (max_output_tokens > 0) api.session_config_set_max_output_tokens(config, max_output_tokens);
  if (apply_template >= 0) api.session_config_set_apply_prompt_template(config, apply_template != 0);
  return config;
}

JNIEXPORT jlong JNICALL Java_com_gemma3nedge_demo_LiteRtLm_nativeCreateConversation(
    JNIEnv *env, jclass c, jlong engine, jboolean greedy, jfloat temperature, jint top_k,
    jfloat top_p, jint seed, jint max_output_tokens) {
  (void)env; (void)c;
  void *session_config = make_session_config(greedy, temperature, top_k, top_p, seed,
                                             max_output_tokens, -1);
  void *config = api.conversation_config_create();
  if (config && session_config) api.conversation_config_set_session_config(config, session_config);
  void *conv = config ? api.conversation_create((void *)(size_t)engine, config) : NULL;
  if (config) api.conversation_config_delete(config);
  if (session_config) api.session_config_delete(session_config);
  return (jlong)(size_t)conv;
}

JNIEXPORT void JNICALL Java_com_gemma3nedge_demo_LiteRtLm_nativeDeleteConversation(JNIEnv *e, jclass c,
                                                                                  jlong h) {
  (void)e; (void)c;
  if (h) api.conversation_delete((void *)(size_t)h);
}

JNIEXPORT void JNICALL Java_com_gemma3nedge_demo_LiteRtLm_nativeCancel(JNIEnv *e, jclass c, jlong h) {
  (void)e; (void)c;
  if (h) api.conversation_cancel_process((void *)(size_t)h);
}

/* ---- streaming: one context per send, freed after the final or error chunk ---- */
typedef struct {
  jobject listener; /* global ref to a LiteRtLm.StreamListener */
  jmethodID on_chunk, on_done, on_error;
} StreamContext;

static void stream_callback(void *data, const void *chunk) {
  StreamContext *ctx = (StreamContext *)data;
  JNIEnv *env = NULL;
  int attached = 0;
  if ((*jvm)->GetEnv(jvm, (void **)&env, JNI_VERSION_1_6) == JNI_EDETACHED) {
    if ((*jvm)->AttachCurrentThread(jvm, (void *)&env, NULL) != JNI_OK) return;
    attached = 1;
  }
  const char *error = api.stream_chunk_get_error(chunk);
  const char *text = api.stream_chunk_get_text(chunk);
  int final = api.stream_chunk_is_final(chunk) || error != NULL;
  if (text && text[0]) {
    jbyteArray b = to_bytes(env, text);
    (*env)->CallVoidMethod(env, ctx->listener, ctx->on_chunk, b);
    (*env)->DeleteLocalRef(env, b);
  }
  if (error) {
    jbyteArray b = to_bytes(env, error);
    (*env)->CallVoidMethod(env, ctx->listener, ctx->on_error, b);
    (*env)->DeleteLocalRef(env, b);
  } else if (final) {
    (*env)->CallVoidMethod(env, ctx->listener, ctx->on_done);
  }
  if ((*env)->ExceptionCheck(env)) (*env)->ExceptionClear(env); /* never unwind into C++ */
  if (final) {
    (*env)->DeleteGlobalRef(env, ctx->listener);
    free(ctx);
  }
  if (attached) (*jvm)->DetachCurrentThread(jvm);
}

/* int nativeSendMessageStream(long conv, byte[] messageJson, StreamListener l): 0 = started. */
JNIEXPORT jint JNICALL Java_com_gemma3nedge_demo_LiteRtLm_nativeSendMessageStream(
    JNIEnv *env, jclass c, jlong conv, jbyteArray jmessage, jobject listener) {
  (void)c;
  StreamContext *ctx = (StreamContext *)malloc(sizeof(StreamContext));
  if (!ctx) return -1;
  jclass lc = (*env)->GetObjectClass(env, listener);
  ctx->on_chunk = (*env)->GetMethodID(env, lc, "onChunk", "([B)V");
  ctx->on_done = (*env)->GetMethodID(env, lc, "onDone", "()V");
  ctx->on_error = (*env)->GetMethodID(env, lc, "onError", "([B)V");
  if (!ctx->on_chunk || !ctx->on_done || !ctx->on_error) {
    free(ctx);
    return -2; /* NoSuchMethodError is pending in Java */
  }
  ctx->listener = (*env)->NewGlobalRef(env, listener);
  char *message = from_bytes(env, jmessage);
  int rc = api.conversation_send_message_stream((void *)(size_t)conv, message, "{}", NULL,
                                                stream_callback, ctx);
  free(message);
  if (rc != 0) {
    (*env)->DeleteGlobalRef(env, ctx->listener);
    free(ctx);
  }
  return rc;
}

/* double[] {init_s, ttft_s, prefill_tok_s, decode_tok_s, prefill_tokens, decode_tokens} of the
 * last turn, or null when the runtime has no benchmark info. */
JNIEXPORT jdoubleArray JNICALL Java_com_gemma3nedge_demo_LiteRtLm_nativeBenchmark(JNIEnv *env, jclass c,
                                                                                 jlong conv) {
  (void)c;
  void *info = api.conversation_get_benchmark_info((void *)(size_t)conv);
  if (!info) return NULL;
  int np = api.benchmark_info_get_num_prefill_turns(info);
  int nd = api.benchmark_info_get_num_decode_turns(info);
  jdouble v[6] = {api.benchmark_info_get_total_init_time_in_second(info),
                  api.benchmark_info_get_time_to_first_token(info), 0, 0, 0, 0};
  if (np > 0) {
    v[2] = api.benchmark_info_get_prefill_tokens_per_sec_at(info, np - 1);
    v[4] = api.benchmark_info_get_prefill_token_count_at(info, np - 1);
  }
  if (nd > 0) {
    v[3] = api.benchmark_info_get_decode_tokens_per_sec_at(info, nd - 1);
    v[5] = api.benchmark_info_get_decode_token_count_at(info, nd - 1);
  }
  api.benchmark_info_delete(info);
  jdoubleArray out = (*env)->NewDoubleArray(env, 6);
  if (out) (*env)->SetDoubleArrayRegion(env, out, 0, 6, v);
  return out;
}

/* byte[] nativeGenerateRaw(long engine, byte[] prompt, int maxOutputTokens): greedy text from a
 * raw session (no chat template): the parity path, comparable token for token. null = failure. */
JNIEXPORT jbyteArray JNICALL Java_com_gemma3nedge_demo_LiteRtLm_nativeGenerateRaw(
    JNIEnv *env, jclass c, jlong engine, jbyteArray jprompt, jint max_output_tokens) {
  (void)c;
  void *config = make_session_config(JNI_TRUE, 1.0f, 1, 1.0f, 0, max_output_tokens, 0);
  void *session = api.engine_create_session((void *)(size_t)engine, config);
  if (config) api.session_config_delete(config);
  if (!session) return NULL;
  char *prompt = from_bytes(env, jprompt);
  void *input = api.input_data_create(kInputText, prompt, c_strlen(prompt));
  jbyteArray out = NULL;
  if (input && api.session_run_prefill(session, (const void *const *)&input, 1) == 0) {
    void *responses = api.session_run_decode(session);
    if (responses) {
      out = to_bytes(env, api.responses_get_response_text_at(responses, 0));
      api.responses_delete(responses);
    }
  }
  if (input) api.input_data_delete(input);
  free(prompt);
  api.session_delete(session);
  return out;
}

JNIEXPORT jintArray JNICALL Java_com_gemma3nedge_demo_LiteRtLm_nativeTokenize(JNIEnv *env, jclass c,
                                                                             jlong engine, jbyteArray jtext) {
  (void)c;
  char *text = from_bytes(env, jtext);
  void *result = api.engine_tokenize((void *)(size_t)engine, text);
  free(text);
  if (!result) return NULL;
  jsize n = (jsize)api.tokenize_result_get_num_tokens(result);
  jintArray out = (*env)->NewIntArray(env, n);
  if (out) (*env)->SetIntArrayRegion(env, out, 0, n, (const jint *)api.tokenize_result_get_tokens(result));
  api.tokenize_result_delete(result);
  return out;
}

JNIEXPORT jbyteArray JNICALL Java_com_gemma3nedge_demo_LiteRtLm_nativeDetokenize(JNIEnv *env, jclass c,
                                                                                jlong engine, jintArray ids) {
  (void)c;
  jsize n = (*env)->GetArrayLength(env, ids);
  jint *buf = (*env)->GetIntArrayElements(env, ids, NULL);
  void *result = api.engine_detokenize((void *)(size_t)engine, (const int *)buf, (size_t)n);
  (*env)->ReleaseIntArrayElements(env, ids, buf, JNI_ABORT);
  if (!result) return NULL;
  jbyteArray out = to_bytes(env, api.detokenize_result_get_string(result));
  api.detokenize_result_delete(result);
  return out;
}
