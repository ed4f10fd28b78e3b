// Decompresses a gzip file with Java's GZIPInputStream and writes the result to standard
// output: one of the outside readers Hydrant's multi-member gzip objects are checked with.
// Run as a single-file program: `java GzipRead.java FILE`.
import java.io.FileInputStream;
import java.io.InputStream;
import java.util.zip.GZIPInputStream;

public class GzipRead {
    public static void main(String[] args) throws Exception {
        try (InputStream in = new GZIPInputStream(new FileInputStream(args[0]))) {
            in.transferTo(System.out);
        }
        System.out.flush();
    }
}
