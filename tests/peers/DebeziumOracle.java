// Runs Debezium's embedded engine and prints every change record as one JSON line on stdout.
//
// Usage: java -cp <debezium jars>:<this class> DebeziumOracle CONFIG.properties
//
// CONFIG holds the Debezium connector/engine properties; keys starting with "json." go
// (without the prefix) to both JsonConverters, e.g. json.decimal.format=NUMERIC.
// Each record is converted twice, as Kafka Connect's JsonConverter does with
// schemas.enable=true and false, and printed as
//   {"kind":"record","topic":T,"key":K,"value":V,"key_plain":K2,"value_plain":V2}
// (K/V are the converters' JSON text, null for a null key or a tombstone).
// Life-cycle lines: {"kind":"streaming"} once the streaming source is connected,
// {"kind":"done","success":B,"message":M,"error":E} when the engine ends.
// The engine stops when stdin closes.
//
// Part of the test peers of cdc (tests/peers/debezium.py compiles and runs it).

import java.io.FileInputStream;
import java.io.InputStream;
import java.io.PrintStream;
import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

import javax.management.MBeanServer;
import javax.management.ObjectName;

import org.apache.kafka.connect.json.JsonConverter;
import org.apache.kafka.connect.source.SourceRecord;

import com.fasterxml.jackson.databind.ObjectMapper;

import io.debezium.embedded.Connect;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.RecordChangeEvent;
import io.debezium.engine.format.ChangeEventFormat;

public final class DebeziumOracle {
    private static final ObjectMapper MAPPER = new ObjectMapper();
    private static final PrintStream OUT = new PrintStream(new java.io.FileOutputStream(java.io.FileDescriptor.out), false,
            StandardCharsets.UTF_8);

    private DebeziumOracle() {
    }

    private static JsonConverter converter(boolean isKey, boolean schemas, Map<String, String> extra) {
        Map<String, Object> config = new HashMap<>(extra);
        config.put("schemas.enable", Boolean.toString(schemas));
        config.put("schemas.cache.size", "1000");
        JsonConverter converter = new JsonConverter();
        converter.configure(config, isKey);
        return converter;
    }

    private static String text(byte[] bytes) {
        return bytes == null ? "null" : new String(bytes, StandardCharsets.UTF_8);
    }

    private static synchronized void emit(String line) {
        OUT.println(line);
        OUT.flush();
    }

    public static void main(String[] args) throws Exception {
        // stdout carries the records only: anything else printing to System.out goes to stderr
        System.setOut(System.err);
        Properties props = new Properties();
        try (InputStream in = new FileInputStream(args[0])) {
            props.load(in);
        }
        Map<String, String> json = new HashMap<>();
        Properties engineProps = new Properties();
        for (String name : props.stringPropertyNames()) {
            if (name.startsWith("json.")) {
                json.put(name.substring(5), props.getProperty(name));
            }
            else {
                engineProps.setProperty(name, props.getProperty(name));
            }
        }
        JsonConverter keySchemas = converter(true, true, json);
        JsonConverter valueSchemas = converter(false, true, json);
        JsonConverter keyPlain = converter(true, false, json);
        JsonConverter valuePlain = converter(false, false, json);

        CountDownLatch done = new CountDownLatch(1);
        DebeziumEngine<RecordChangeEvent<SourceRecord>> engine = DebeziumEngine.create(ChangeEventFormat.of(Connect.class))
                .using(engineProps)
                .using((success, message, error) -> {
                    StringBuilder line = new StringBuilder("{\"kind\":\"done\",\"success\":").append(success);
                    try {
                        line.append(",\"message\":").append(MAPPER.writeValueAsString(message));
                        line.append(",\"error\":").append(MAPPER.writeValueAsString(error == null ? null : error.toString()));
                    }
                    catch (Exception e) {
                        line.append(",\"message\":null,\"error\":null");
                    }
                    emit(line.append('}').toString());
                    done.countDown();
                })
                .notifying((List<RecordChangeEvent<SourceRecord>> records,
                        DebeziumEngine.RecordCommitter<RecordChangeEvent<SourceRecord>> committer) -> {
                    for (RecordChangeEvent<SourceRecord> event : records) {
                        SourceRecord r = event.record();
                        String topic = r.topic();
                        String line;
                        try {
                            line = "{\"kind\":\"record\",\"topic\":" + MAPPER.writeValueAsString(topic)
                                    + ",\"key\":" + text(keySchemas.fromConnectData(topic, r.keySchema(), r.key()))
                                    + ",\"value\":" + text(valueSchemas.fromConnectData(topic, r.valueSchema(), r.value()))
                                    + ",\"key_plain\":" + text(keyPlain.fromConnectData(topic, r.keySchema(), r.key()))
                                    + ",\"value_plain\":" + text(valuePlain.fromConnectData(topic, r.valueSchema(), r.value()))
                                    + "}";
                        }
                        catch (Exception e) {
                            throw new IllegalStateException("cannot convert a record of " + topic, e);
                        }
                        emit(line);
                        committer.markProcessed(event);
                    }
                    committer.markBatchFinished();
                })
                .build();

        ExecutorService executor = Executors.newSingleThreadExecutor();
        executor.execute(engine);

        Thread watcher = new Thread(() -> watchStreaming(done), "streaming-watcher");
        watcher.setDaemon(true);
        watcher.start();

        Thread stdin = new Thread(() -> {
            try {
                while (System.in.read() >= 0) {
                    // the parent writes nothing: EOF means stop
                }
            }
            catch (Exception ignored) {
                // closed: stop as well
            }
            try {
                engine.close();
            }
            catch (Exception e) {
                e.printStackTrace();
            }
        }, "stdin-watcher");
        stdin.setDaemon(true);
        stdin.start();

        done.await();
        executor.shutdown();
        OUT.flush();
        System.exit(0);
    }

    /** Report once the streaming source is connected (JMX metric "Connected" of any Debezium connector). */
    private static void watchStreaming(CountDownLatch done) {
        MBeanServer server = ManagementFactory.getPlatformMBeanServer();
        try {
            ObjectName pattern = new ObjectName("debezium.*:type=connector-metrics,context=streaming,*");
            while (done.getCount() > 0) {
                Set<ObjectName> names = server.queryNames(pattern, null);
                for (ObjectName name : names) {
                    Object connected = server.getAttribute(name, "Connected");
                    if (Boolean.TRUE.equals(connected)) {
                        emit("{\"kind\":\"streaming\",\"mbean\":" + MAPPER.writeValueAsString(name.toString()) + "}");
                        return;
                    }
                }
                Thread.sleep(50);
            }
        }
        catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        catch (Exception e) {
            emit("{\"kind\":\"warning\",\"message\":\"streaming watcher failed: " + e.getClass().getName() + "\"}");
        }
    }
}
