import com.gemma3nedge.demo.LiteRtLm;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * Desktop driver for the JNI shim: the app's own LiteRtLm class, the same C shim built for
 * x86_64, and the desktop liblitert-lm.so. Not packaged into the APK (tests/test_apk.py runs it).
 *
 * <p>Usage: JniDriver SHIM_SO RUNTIME_SO MODEL PROMPT MAX_TOKENS [EXPECTED_IDS]
 * Prints one line "RESULT {json}" with the raw greedy continuation, its token ids, the
 * detokenized expected ids, and the streamed chat answer with its metrics.
 */
public final class JniDriver {
    public static void main(String[] args) throws Exception {
        String shim = args[0];
        String runtime = args[1];
        String model = args[2];
        String prompt = args[3];
        int maxTokens = Integer.parseInt(args[4]);
        int[] expected = args.length > 5 ? parseIds(args[5]) : new int[0];

        LiteRtLm.init(shim, runtime);
        boolean vision = LiteRtLm.supports(model, LiteRtLm.MODALITY_VISION);
        boolean audio = LiteRtLm.supports(model, LiteRtLm.MODALITY_AUDIO);
        long t0 = System.nanoTime();
        LiteRtLm.Engine engine = new LiteRtLm.Engine(model, "cpu", null, null, 0, null);
        double initS = (System.nanoTime() - t0) / 1e9;

        String raw = engine.generateRaw(prompt, maxTokens);
        int[] rawIds = engine.tokenize(raw);
        String expectedText = expected.length > 0 ? engine.detokenize(expected) : "";

        // The chat path the app uses: conversation + streaming callbacks from a runtime thread.
        LiteRtLm.Conversation conv = engine.newConversation(true, 1.0f, 1, 1.0f, maxTokens);
        final List<String> chunks = new ArrayList<String>();
        final String[] error = new String[1];
        final CountDownLatch done = new CountDownLatch(1);
        conv.send("{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":" + quote(prompt) + "}]}",
                new LiteRtLm.StreamListener() {
                    @Override
                    public void onChunk(byte[] utf8) {
                        synchronized (chunks) {
                            chunks.add(new String(utf8, java.nio.charset.StandardCharsets.UTF_8));
                        }
                    }

                    @Override
                    public void onDone() {
                        done.countDown();
                    }

                    @Override
                    public void onError(byte[] utf8) {
                        error[0] = new String(utf8, java.nio.charset.StandardCharsets.UTF_8);
                        done.countDown();
                    }
                });
        boolean finished = done.await(120, TimeUnit.SECONDS);
        double[] bench = conv.benchmark();
        conv.close();
        engine.close();

        StringBuilder sb = new StringBuilder("RESULT {");
        sb.append("\"raw_text\":").append(quote(raw));
        sb.append(",\"raw_ids\":").append(ids(rawIds));
        sb.append(",\"expected_text\":").append(quote(expectedText));
        sb.append(",\"supports_vision\":").append(vision);
        sb.append(",\"supports_audio\":").append(audio);
        sb.append(",\"init_wall_s\":").append(initS);
        sb.append(",\"stream_finished\":").append(finished);
        sb.append(",\"stream_error\":").append(error[0] == null ? "null" : quote(error[0]));
        sb.append(",\"stream_chunks\":[");
        synchronized (chunks) {
            for (int i = 0; i < chunks.size(); i++) {
                sb.append(i > 0 ? "," : "").append(quote(chunks.get(i)));
            }
        }
        sb.append("],\"benchmark\":[");
        for (int i = 0; bench != null && i < bench.length; i++) {
            sb.append(i > 0 ? "," : "").append(Double.isNaN(bench[i]) ? "null" : String.valueOf(bench[i]));
        }
        sb.append("]}");
        System.out.println(sb);
    }

    private static int[] parseIds(String s) {
        String[] parts = s.split(",");
        int[] out = new int[parts.length];
        for (int i = 0; i < parts.length; i++) {
            out[i] = Integer.parseInt(parts[i].trim());
        }
        return out;
    }

    private static String ids(int[] ids) {
        StringBuilder sb = new StringBuilder("[");
        for (int i = 0; i < ids.length; i++) {
            sb.append(i > 0 ? "," : "").append(ids[i]);
        }
        return sb.append("]").toString();
    }

    private static String quote(String s) {
        StringBuilder sb = new StringBuilder("\"");
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\\') {
                sb.append('\\').append(c);
            } else if (c < 0x20) {
                sb.append(String.format("\\u%04x", (int) c));
            } else {
                sb.append(c);
            }
        }
        return sb.append('"').toString();
    }
}
