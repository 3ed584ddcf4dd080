package com.gemma3nedge.demo;

import android.Manifest;
import android.app.Activity;
import android.content.Intent;
import android.content.pm.PackageManager;
import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import android.net.Uri;
import android.os.Bundle;
import android.os.ParcelFileDescriptor;
import android.os.SystemClock;
import android.util.Base64;
import android.view.View;
import android.widget.ArrayAdapter;
import android.widget.Button;
import android.widget.EditText;
import android.widget.ScrollView;
import android.widget.Spinner;
import android.widget.TextView;
import android.widget.Toast;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.util.Locale;

/**
 * The chat screen: load the bundle (CPU by default, GPU selectable), type a prompt, attach an
 * image or audio when the bundle has those encoders, watch the answer stream in, stop it, and
 * read init time / time to first token / prefill and decode speed under the model row.
 *
 * <p>The bundle is looked for where `gemma3n-edge install` pushes it (this app's external
 * files directory), or picked by the user with the system file picker.
 */
public class MainActivity extends Activity {
    static final String BUNDLE_NAME = "model.litertlm";
    private static final int REQ_IMAGE = 1;
    private static final int REQ_AUDIO = 2;
    private static final int REQ_MODEL = 3;
    private static final int REQ_MIC = 4;
    private static final int MAX_IMAGE_SIDE = 1024; // the runtime resizes anyway; keeps blobs small

    private Spinner backend;
    private Button load, send, stop, pickImage, pickAudio, record;
    private TextView status, metrics, transcript, attachments;
    private EditText prompt;
    private ScrollView scroll;

    private String modelPath;
    private ParcelFileDescriptor pickedModel; // kept open while its /proc/self/fd path is in use
    private LiteRtLm.Engine engine;
    private LiteRtLm.Conversation conversation;
    private boolean hasVision, hasAudio, generating;
    private byte[] pendingImage, pendingAudio;
    private final AudioCapture capture = new AudioCapture();
    private double initSeconds;
    private long sendTime, firstChunkTime;
    // The one listener every button shares; onButton says what each one does.
    private final View.OnClickListener clicks = new View.OnClickListener() {
        @Override
        public void onClick(View v) {
            onButton(v.getId());
        }
    };

    @Override
    protected void onCreate(Bundle saved) {
        super.onCreate(saved);
        setContentView(R.layout.activity_main);
        backend = (Spinner) findViewById(R.id.backend);
        status = (TextView) findViewById(R.id.status);
        metrics = (TextView) findViewById(R.id.metrics);
        transcript = (TextView) findViewById(R.id.transcript);
        attachments = (TextView) findViewById(R.id.attachments);
        prompt = (EditText) findViewById(R.id.prompt);
        scroll = (ScrollView) findViewById(R.id.scroll);
        load = button(R.id.load);
        send = button(R.id.send);
        stop = button(R.id.stop);
        pickImage = button(R.id.pick_image);
        pickAudio = button(R.id.pick_audio);
        record = button(R.id.record);
        button(R.id.pick_model);
        button(R.id.clear);

        ArrayAdapter<String> backends = new ArrayAdapter<String>(this,
                android.R.layout.simple_spinner_item, new String[] {"CPU", "GPU"});
        backends.setDropDownViewResource(android.R.layout.simple_spinner_dropdown_item);
        backend.setAdapter(backends);

        locateBundle();
        refreshButtons();
    }

    /** Finds a button and gives it the shared listener. */
    private Button button(int id) {
        Button b = (Button) findViewById(id);
        b.setOnClickListener(clicks);
        return b;
    }

    // if/else, not switch: a switch needs R.id fields to be constants, which they are not in library builds.
    private void onButton(int id) {
        if (id == R.id.load) {
            loadModel();
        } else if (id == R.id.pick_model) {
            pick(Intent.ACTION_OPEN_DOCUMENT, "*/*", REQ_MODEL);
        } else if (id == R.id.send) {
            sendPrompt();
        } else if (id == R.id.stop) {
            if (conversation != null) {
                conversation.cancel();
            }
        } else if (id == R.id.pick_image) {
            pick(Intent.ACTION_GET_CONTENT, "image/*", REQ_IMAGE);
        } else if (id == R.id.pick_audio) {
            pick(Intent.ACTION_GET_CONTENT, "audio/*", REQ_AUDIO);
        } else if (id == R.id.record) {
            toggleRecording();
        } else if (id == R.id.clear) {
            clearChat();
        }
    }

    /** Where `gemma3n-edge install` pushes the bundle: this app's external files directory. */
    private void locateBundle() {
        File dir = getExternalFilesDir(null);
        File pushed = dir == null ? null : new File(dir, BUNDLE_NAME);
        if (pushed != null && pushed.canRead()) {
            modelPath = pushed.getAbsolutePath();
            status.setText("Bundle: " + modelPath + " (" + pushed.length() / (1 << 20) + " MiB). Tap Load.");
        } else {
            status.setText(getString(R.string.no_bundle) + "\n(expected at " + pushed + ")");
        }
    }

    private void pick(String action, String type, int request) {
        Intent intent = new Intent(action);
        intent.addCategory(Intent.CATEGORY_OPENABLE);
        intent.setType(type);
        startActivityForResult(intent, request);
    }

    private void loadModel() {
        if (modelPath == null) {
            toast(getString(R.string.no_bundle));
            return;
        }
        final String path = modelPath;
        final boolean gpu = backend.getSelectedItemPosition() == 1;
        final String runtime = getApplicationInfo().nativeLibraryDir + "/liblitert-lm.so";
        final String cacheDir = getCacheDir().getAbsolutePath();
        closeEngine();
        status.setText("Loading " + path + " on " + (gpu ? "GPU" : "CPU") + "…");
        load.setEnabled(false);
        new Thread(new Runnable() {
            @Override
            public void run() {
                String error = null;
                long t0 = SystemClock.elapsedRealtime();
                try {
                    LiteRtLm.init(null, runtime);
                    boolean vision = LiteRtLm.supports(path, LiteRtLm.MODALITY_VISION);
                    boolean audio = LiteRtLm.supports(path, LiteRtLm.MODALITY_AUDIO);
                    // As Google's Gallery does for Gemma 3n: vision follows the main backend,
                    // audio stays on CPU.
                    LiteRtLm.Engine e = new LiteRtLm.Engine(path, gpu ? "gpu" : "cpu",
                            vision ? (gpu ? "gpu" : "cpu") : null, audio ? "cpu" : null, 0, cacheDir);
                    LiteRtLm.Conversation c = newConversation(e);
                    synchronized (MainActivity.this) {
                        engine = e;
                        conversation = c;
                        hasVision = vision;
                        hasAudio = audio;
                    }
                } catch (RuntimeException | UnsatisfiedLinkError ex) {
                    error = ex.getMessage();
                }
                final String failure = error;
                final double seconds = (SystemClock.elapsedRealtime() - t0) / 1000.0;
                runOnUiThread(new Runnable() {
                    @Override
                    public void run() {
                        load.setEnabled(true);
                        if (failure != null) {
                            status.setText("Load failed: " + failure);
                        } else {
                            initSeconds = seconds;
                            status.setText("Loaded " + new File(path).getName() + " on "
                                    + (gpu ? "GPU" : "CPU") + (hasVision ? " · image" : "")
                                    + (hasAudio ? " · audio" : ""));
                            metrics.setText(String.format(Locale.US, "init %.2f s", seconds));
                        }
                        refreshButtons();
                    }
                });
            }
        }, "load-model").start();
    }

    private static LiteRtLm.Conversation newConversation(LiteRtLm.Engine e) {
        // Gemma 3n's published sampling defaults (top-k 64, top-p 0.95, temperature 1.0).
        return e.newConversation(false, 1.0f, 64, 0.95f, 0);
    }

    private void sendPrompt() {
        final String text = prompt.getText().toString().trim();
        if (conversation == null || generating || (text.isEmpty() && pendingImage == null
                && pendingAudio == null)) {
            return;
        }
        String message;
        try {
            JSONArray content = new JSONArray();
            if (pendingImage != null) {
                content.put(new JSONObject().put("type", "image")
                        .put("blob", Base64.encodeToString(pendingImage, Base64.NO_WRAP)));
            }
            if (pendingAudio != null) {
                content.put(new JSONObject().put("type", "audio")
                        .put("blob", Base64.encodeToString(pendingAudio, Base64.NO_WRAP)));
            }
            content.put(new JSONObject().put("type", "text").put("text", text));
            message = new JSONObject().put("role", "user").put("content", content).toString();
        } catch (JSONException e) {
            toast("cannot build the message: " + e.getMessage());
            return;
        }
        transcript.append("\n\nYou: " + text + (pendingImage != null ? " [image]" : "")
                + (pendingAudio != null ? " [audio]" : "") + "\nGemma: ");
        pendingImage = null;
        pendingAudio = null;
        attachments.setText("");
        prompt.setText("");
        generating = true;
        sendTime = SystemClock.elapsedRealtime();
        firstChunkTime = 0;
        refreshButtons();
        try {
            conversation.send(message, new LiteRtLm.StreamListener() {
                @Override
                public void onChunk(byte[] utf8) {
                    final String piece = chunkText(LiteRtLm.str(utf8));
                    runOnUiThread(new Runnable() {
                        @Override
                        public void run() {
                            if (firstChunkTime == 0) {
                                firstChunkTime = SystemClock.elapsedRealtime();
                            }
                            transcript.append(piece);
                            scroll.fullScroll(View.FOCUS_DOWN);
                        }
                    });
                }

                @Override
                public void onDone() {
                    finishTurn(null);
                }

                @Override
                public void onError(byte[] utf8) {
                    finishTurn(LiteRtLm.str(utf8));
                }
            });
        } catch (IllegalStateException e) {
            finishTurn(e.getMessage());
        }
    }

    /** A streamed chunk is a JSON message; its text parts are what the user reads. */
    static String chunkText(String chunk) {
        try {
            Object content = new JSONObject(chunk).opt("content");
            if (content instanceof String) {
                return (String) content;
            }
            StringBuilder sb = new StringBuilder();
            JSONArray parts = content instanceof JSONArray ? (JSONArray) content : new JSONArray();
            for (int i = 0; i < parts.length(); i++) {
                JSONObject part = parts.optJSONObject(i);
                if (part != null && "text".equals(part.optString("type"))) {
                    sb.append(part.optString("text"));
                }
            }
            return sb.toString();
        } catch (JSONException e) {
            return chunk; // plain text from an older runtime
        }
    }

    private void finishTurn(final String error) {
        runOnUiThread(new Runnable() {
            @Override
            public void run() {
                generating = false;
                if (error != null) {
                    boolean stopped = error.contains("CANCELLED") || error.contains("ancel");
                    transcript.append(stopped ? " [stopped]" : "\n[error: " + error + "]");
                }
                showMetrics();
                refreshButtons();
            }
        });
    }

    /** Runtime benchmark numbers when it has them; wall-clock fallbacks otherwise. */
    private void showMetrics() {
        double[] b = conversation == null ? null : conversation.benchmark();
        double init = b != null && b[0] > 0 ? b[0] : initSeconds;
        double ttft = b != null && b[1] > 0 ? b[1]
                : (firstChunkTime > 0 ? (firstChunkTime - sendTime) / 1000.0 : 0);
        double prefill = b != null ? b[2] : 0;
        double decode = b != null ? b[3] : 0;
        metrics.setText(String.format(Locale.US,
                "init %.2f s · TTFT %.2f s · prefill %.1f tok/s · decode %.1f tok/s", init, ttft, prefill, decode));
    }

    private void clearChat() {
        if (generating || engine == null) {
            return;
        }
        conversation.close();
        conversation = newConversation(engine);
        transcript.setText("");
        metrics.setText("");
    }

    private void toggleRecording() {
        if (capture.isRunning()) {
            pendingAudio = capture.stop();
            record.setText(R.string.record);
            attachments.setText(describeAttachments());
            return;
        }
        if (checkSelfPermission(Manifest.permission.RECORD_AUDIO) != PackageManager.PERMISSION_GRANTED) {
            requestPermissions(new String[] {Manifest.permission.RECORD_AUDIO}, REQ_MIC);
            return;
        }
        try {
            capture.start();
            record.setText(R.string.stop_recording);
        } catch (IllegalStateException e) {
            toast(e.getMessage());
        }
    }

    @Override
    public void onRequestPermissionsResult(int request, String[] permissions, int[] results) {
        if (request == REQ_MIC && results.length > 0 && results[0] == PackageManager.PERMISSION_GRANTED) {
            toggleRecording();
        } else if (request == REQ_MIC) {
            toast("recording needs the microphone permission");
        }
    }

    @Override
    protected void onActivityResult(int request, int result, Intent data) {
        if (result != RESULT_OK || data == null || data.getData() == null) {
            return;
        }
        Uri uri = data.getData();
        try {
            if (request == REQ_MODEL) {
                closeEngine();
                if (pickedModel != null) {
                    pickedModel.close();
                }
                pickedModel = getContentResolver().openFileDescriptor(uri, "r");
                modelPath = "/proc/self/fd/" + pickedModel.getFd();
                status.setText("Bundle picked: " + uri.getLastPathSegment() + ". Tap Load.");
            } else if (request == REQ_IMAGE) {
                pendingImage = downscaledPng(readAll(uri));
            } else if (request == REQ_AUDIO) {
                byte[] audio = readAll(uri);
                if (!AudioCapture.isWav(audio)) {
                    toast("pick a WAV file (16 kHz mono is what the model hears), or record one");
                    return;
                }
                pendingAudio = audio;
            }
        } catch (IOException | RuntimeException e) {
            toast("cannot read " + uri + ": " + e.getMessage());
        }
        attachments.setText(describeAttachments());
        refreshButtons();
    }

    private byte[] readAll(Uri uri) throws IOException {
        InputStream in = getContentResolver().openInputStream(uri);
        if (in == null) {
            throw new IOException("no stream");
        }
        try {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] buf = new byte[1 << 16];
            for (int n; (n = in.read(buf)) > 0; ) {
                out.write(buf, 0, n);
            }
            return out.toByteArray();
        } finally {
            in.close();
        }
    }

    static byte[] downscaledPng(byte[] encoded) {
        Bitmap bitmap = BitmapFactory.decodeByteArray(encoded, 0, encoded.length);
        if (bitmap == null) {
            throw new IllegalArgumentException("not an image Android can decode");
        }
        int side = Math.max(bitmap.getWidth(), bitmap.getHeight());
        if (side > MAX_IMAGE_SIDE) {
            float s = (float) MAX_IMAGE_SIDE / side;
            bitmap = Bitmap.createScaledBitmap(bitmap, Math.round(bitmap.getWidth() * s),
                    Math.round(bitmap.getHeight() * s), true);
        }
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        bitmap.compress(Bitmap.CompressFormat.PNG, 100, out);
        return out.toByteArray();
    }

    private String describeAttachments() {
        String s = "";
        if (pendingImage != null) {
            s += "image " + pendingImage.length / 1024 + " KiB ";
        }
        if (pendingAudio != null) {
            s += "audio " + (pendingAudio.length - 44) / (2 * AudioCapture.SAMPLE_RATE) + " s";
        }
        return s;
    }

    private void refreshButtons() {
        boolean ready = conversation != null && !generating;
        send.setEnabled(ready);
        stop.setEnabled(generating);
        pickImage.setEnabled(ready && hasVision);
        pickAudio.setEnabled(ready && hasAudio);
        record.setEnabled((ready && hasAudio) || capture.isRunning());
        pickImage.setVisibility(hasVision || engine == null ? View.VISIBLE : View.GONE);
        pickAudio.setVisibility(hasAudio || engine == null ? View.VISIBLE : View.GONE);
        record.setVisibility(hasAudio || engine == null ? View.VISIBLE : View.GONE);
    }

    private synchronized void closeEngine() {
        if (conversation != null) {
            conversation.cancel();
            conversation.close();
            conversation = null;
        }
        if (engine != null) {
            engine.close();
            engine = null;
        }
        hasVision = false;
        hasAudio = false;
    }

    private void toast(String message) {
        Toast.makeText(this, message, Toast.LENGTH_LONG).show();
    }

    @Override
    protected void onDestroy() {
        if (capture.isRunning()) {
            capture.stop();
        }
        closeEngine();
        if (pickedModel != null) {
            try {
                pickedModel.close();
            } catch (IOException ignored) {
                // closing a read-only descriptor at exit: nothing to recover
            }
        }
        super.onDestroy();
    }
}
