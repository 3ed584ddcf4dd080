package com.gemma3nedge.demo;

import android.media.AudioFormat;
import android.media.AudioRecord;
import android.media.MediaRecorder;

import java.io.ByteArrayOutputStream;

/**
 * Microphone capture for spoken prompts: 16 kHz mono 16-bit PCM (what Gemma 3n's audio
 * encoder consumes), at most MAX_SECONDS, returned as a WAV file in memory (the form the
 * LiteRT-LM runtime decodes for an audio blob).
 */
final class AudioCapture {
    static final int SAMPLE_RATE = 16000;
    static final int MAX_SECONDS = 30;

    private final ByteArrayOutputStream pcm = new ByteArrayOutputStream();
    private volatile boolean running;
    private AudioRecord record;
    private Thread reader;

    /** Starts recording; the caller holds RECORD_AUDIO. */
    void start() {
        int min = AudioRecord.getMinBufferSize(SAMPLE_RATE, AudioFormat.CHANNEL_IN_MONO,
                AudioFormat.ENCODING_PCM_16BIT);
        record = new AudioRecord(MediaRecorder.AudioSource.MIC, SAMPLE_RATE, AudioFormat.CHANNEL_IN_MONO,
                AudioFormat.ENCODING_PCM_16BIT, Math.max(min, SAMPLE_RATE));
        if (record.getState() != AudioRecord.STATE_INITIALIZED) {
            record.release();
            record = null;
            throw new IllegalStateException("the microphone could not be opened");
        }
        pcm.reset();
        running = true;
        record.startRecording();
        reader = new Thread(new Runnable() {
            @Override
            public void run() {
                byte[] buf = new byte[4096];
                int limit = SAMPLE_RATE * 2 * MAX_SECONDS;
                while (running && pcm.size() < limit) {
                    int n = record.read(buf, 0, buf.length);
                    if (n > 0) {
                        pcm.write(buf, 0, n);
                    } else if (n < 0) {
                        break;
                    }
                }
            }
        }, "audio-capture");
        reader.start();
    }

    boolean isRunning() {
        return running && reader != null && reader.isAlive();
    }

    /** Stops and returns the recording as WAV bytes. */
    byte[] stop() {
        running = false;
        if (reader != null) {
            try {
                reader.join(2000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
        if (record != null) {
            record.stop();
            record.release();
            record = null;
        }
        return wav(pcm.toByteArray(), SAMPLE_RATE);
    }

    /** A canonical 44-byte RIFF/WAVE header (PCM, mono, 16-bit) followed by the samples. */
    static byte[] wav(byte[] pcm16, int sampleRate) {
        byte[] out = new byte[44 + pcm16.length];
        putAscii(out, 0, "RIFF");
        putLe32(out, 4, 36 + pcm16.length);
        putAscii(out, 8, "WAVEfmt ");
        putLe32(out, 16, 16);
        putLe16(out, 20, 1); // PCM
        putLe16(out, 22, 1); // mono
        putLe32(out, 24, sampleRate);
        putLe32(out, 28, sampleRate * 2);
        putLe16(out, 32, 2);
        putLe16(out, 34, 16);
        putAscii(out, 36, "data");
        putLe32(out, 40, pcm16.length);
        System.arraycopy(pcm16, 0, out, 44, pcm16.length);
        return out;
    }

    /** True for a RIFF/WAVE file: the only audio container the runtime is fed here. */
    static boolean isWav(byte[] b) {
        return b != null && b.length > 12 && b[0] == 'R' && b[1] == 'I' && b[2] == 'F' && b[3] == 'F'
                && b[8] == 'W' && b[9] == 'A' && b[10] == 'V' && b[11] == 'E';
    }

    private static void putAscii(byte[] b, int at, String s) {
        for (int i = 0; i < s.length(); i++) {
            b[at + i] = (byte) s.charAt(i);
        }
    }

    private static void putLe16(byte[] b, int at, int v) {
        b[at] = (byte) v;
        b[at + 1] = (byte) (v >> 8);
    }

    private static void putLe32(byte[] b, int at, int v) {
        putLe16(b, at, v);
        putLe16(b, at + 2, v >> 16);
    }
}
