package com.gemma3nedge.demo;

import java.io.UnsupportedEncodingException;

/**
 * Java face of the JNI shim (jni/litertlm_jni.c) over Google's LiteRT-LM C API.
 *
 * <p>Plain Java with no Android imports, so the same class runs in the app and in the
 * desktop JVM test. Strings cross JNI as UTF-8 byte arrays (JNI's own string functions use
 * modified UTF-8). Handles are native pointers held in a long; each wrapper frees its own.
 */
public final class LiteRtLm {
    public static final int MODALITY_TEXT = 0;
    public static final int MODALITY_VISION = 1;
    public static final int MODALITY_AUDIO = 2;

    /** Streamed answer: called on a runtime thread, never the UI thread. */
    public interface StreamListener {
        void onChunk(byte[] utf8);

        void onDone();

        void onError(byte[] utf8);
    }

    private static boolean initialized;

    private LiteRtLm() {}

    static native byte[] nativeInit(byte[] runtimePath);

    static native byte[] nativeLastError();

    static native boolean nativeSupportsModality(byte[] modelPath, int modality);

    static native long nativeCreateEngine(
            byte[] modelPath, byte[] backend, byte[] visionBackend, byte[] audioBackend,
            int maxNumTokens, byte[] cacheDir);

    static native void nativeDeleteEngine(long engine);

    static native long nativeCreateConversation(
            long engine, boolean greedy, float temperature, int topK, float topP, int seed,
            int maxOutputTokens);

    static native void nativeDeleteConversation(long conversation);

    static native void nativeCancel(long conversation);

    static native int nativeSendMessageStream(long conversation, byte[] messageJson, StreamListener l);

    static native double[] nativeBenchmark(long conversation);

    static native byte[] nativeGenerateRaw(long engine, byte[] prompt, int maxOutputTokens);

    static native int[] nativeTokenize(long engine, byte[] text);

    static native byte[] nativeDetokenize(long engine, int[] ids);

    /**
     * Loads the shim and then the runtime by full path (liblitert-lm.so has no SONAME, so it
     * cannot be a dependency of the shim). shimPath null = System.loadLibrary (the APK case).
     */
    public static synchronized void init(String shimPath, String runtimePath) {
        if (initialized) {
            return;
        }
        if (shimPath == null) {
            System.loadLibrary("litertlm_jni");
        } else {
            System.load(shimPath);
        }
        byte[] error = nativeInit(utf8(runtimePath));
        if (error != null) {
            throw new IllegalStateException("cannot load " + runtimePath + ": " + str(error));
        }
        initialized = true;
    }

    /** Whether the bundle has an encoder for the modality (MODALITY_VISION / MODALITY_AUDIO). */
    public static boolean supports(String modelPath, int modality) {
        return nativeSupportsModality(utf8(modelPath), modality);
    }

    static byte[] utf8(String s) {
        if (s == null) {
            return null;
        }
        try {
            return s.getBytes("UTF-8");
        } catch (UnsupportedEncodingException e) {
            throw new AssertionError(e);
        }
    }

    static String str(byte[] b) {
        if (b == null) {
            return null;
        }
        try {
            return new String(b, "UTF-8");
        } catch (UnsupportedEncodingException e) {
            throw new AssertionError(e);
        }
    }

    private static String lastError() {
        return str(nativeLastError());
    }

    /** One loaded bundle. backend: "cpu" or "gpu"; vision/audio backends null when unused. */
    public static final class Engine {
        private long handle;

        public Engine(String modelPath, String backend, String visionBackend, String audioBackend,
                      int maxNumTokens, String cacheDir) {
            handle = nativeCreateEngine(utf8(modelPath), utf8(backend), utf8(visionBackend),
                    utf8(audioBackend), maxNumTokens, utf8(cacheDir));
            if (handle == 0) {
                throw new IllegalStateException("cannot load " + modelPath + " on " + backend
                        + ": " + lastError());
            }
        }

        public Conversation newConversation(boolean greedy, float temperature, int topK, float topP,
                                            int maxOutputTokens) {
            long c = nativeCreateConversation(handle, greedy, temperature, topK, topP, 0, maxOutputTokens);
            if (c == 0) {
                throw new IllegalStateException("cannot start a conversation: " + lastError());
            }
            return new Conversation(c);
        }

        /** Greedy continuation of a raw prompt (no chat template): the parity path. */
        public String generateRaw(String prompt, int maxOutputTokens) {
            byte[] out = nativeGenerateRaw(handle, utf8(prompt), maxOutputTokens);
            if (out == null) {
                throw new IllegalStateException("generation failed: " + lastError());
            }
            return str(out);
        }

        public int[] tokenize(String text) {
            int[] ids = nativeTokenize(handle, utf8(text));
            if (ids == null) {
                throw new IllegalStateException("tokenize failed: " + lastError());
            }
            return ids;
        }

        public String detokenize(int[] ids) {
            byte[] out = nativeDetokenize(handle, ids);
            if (out == null) {
                throw new IllegalStateException("detokenize failed: " + lastError());
            }
            return str(out);
        }

        public synchronized void close() {
            if (handle != 0) {
                nativeDeleteEngine(handle);
                handle = 0;
            }
        }
    }

    /** A chat with history; messages are LiteRT-LM JSON messages (role + content list). */
    public static final class Conversation {
        private long handle;

        Conversation(long handle) {
            this.handle = handle;
        }

        /** Starts streaming the answer; returns at once. Throws if the runtime refused to start. */
        public void send(String messageJson, StreamListener listener) {
            int rc = nativeSendMessageStream(handle, utf8(messageJson), listener);
            if (rc != 0) {
                throw new IllegalStateException("send failed (" + rc + "): " + lastError());
            }
        }

        public void cancel() {
            if (handle != 0) {
                nativeCancel(handle);
            }
        }

        /** {init s, TTFT s, prefill tok/s, decode tok/s, prefill tokens, decode tokens} or null. */
        public double[] benchmark() {
            return handle == 0 ? null : nativeBenchmark(handle);
        }

        public synchronized void close() {
            if (handle != 0) {
                nativeDeleteConversation(handle);
                handle = 0;
            }
        }
    }
}
